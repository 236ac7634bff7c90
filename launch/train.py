"""``deepspeed launch/train.py +recipe=math_ppo [key=value ...]`` (or plain ``python``): train a policy.

The file DeepSpeed's launcher starts on every rank, in a checkout; the command itself is :mod:`prm_rl.cli.train`,
which an installed prm_rl runs from any directory as ``prm-rl train`` (:mod:`prm_rl.cli.main`).
"""
from prm_rl.cli.train import main

if __name__ == "__main__":
    main("prime")
