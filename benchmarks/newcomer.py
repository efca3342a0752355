"""The newcomer baseline: the tutorial's loops, with one `mlflow.log_metric` call per value.

python benchmarks/newcomer.py --methods bgd,sgd --step-sizes 0.01,0.1 --seeds 0,1 --epochs 20

This is how the BGD/SGD tutorial is usually tracked by hand: a loop per method, a
`log_metric` call for every epoch value and every update's loss. `benchmarks/sweeps.py` runs it
beside gdexp on the same grid.
"""

from __future__ import annotations

import argparse

import mlflow
import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="bgd,sgd")
    parser.add_argument("--step-sizes", default="0.1")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--no-step-loss", action="store_true")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    args = parser.parse_args()

    mlflow.set_tracking_uri(args.tracking_uri)
    mlflow.set_experiment("newcomer")
    X = torch.arange(-5, 5, 0.1).view(-1, 1)
    for method in args.methods.split(","):
        for lr in map(float, args.step_sizes.split(",")):
            for seed in map(int, args.seeds.split(",")):
                torch.manual_seed(seed)
                Y = -5 * X + 0.4 * torch.randn(X.size())
                w = torch.tensor(-10.0, requires_grad=True)
                b = torch.tensor(-20.0, requires_grad=True)
                with mlflow.start_run(run_name=f"{method} lr={lr} seed={seed}"):
                    mlflow.log_param("method", method)
                    mlflow.log_param("step_size", lr)
                    mlflow.log_param("seed", seed)
                    mlflow.log_param("epochs", args.epochs)
                    step = 0
                    for epoch in range(args.epochs):
                        loss = torch.mean((w * X + b - Y) ** 2)
                        mlflow.log_metric("loss", loss.item(), step=epoch)
                        batches = [(X, Y)] if method == "bgd" else zip(X, Y, strict=True)
                        for x, y in batches:
                            step_loss = torch.mean((w * x + b - y) ** 2)
                            step_loss.backward()
                            with torch.no_grad():
                                w -= lr * w.grad
                                b -= lr * b.grad
                            w.grad.zero_()
                            b.grad.zero_()
                            if not args.no_step_loss:
                                mlflow.log_metric("step_loss", step_loss.item(), step=step)
                            step += 1
                        mlflow.log_metric("w", w.item(), step=epoch + 1)
                        mlflow.log_metric("b", b.item(), step=epoch + 1)
                    mlflow.log_metric("final_loss", torch.mean((w * X + b - Y) ** 2).item())


if __name__ == "__main__":
    main()
