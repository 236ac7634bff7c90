"""``deepspeed launch/train_prm.py +recipe=prm_math [key=value ...]`` (or plain ``python``): train an implicit PRM
offline (docs/prm_training.md).

The file DeepSpeed's launcher starts on every rank, in a checkout; the command itself is :mod:`prm_rl.cli.train`,
which an installed prm_rl runs from any directory as ``prm-rl train-prm`` (:mod:`prm_rl.cli.main`).
"""
from prm_rl.cli.train import main

if __name__ == "__main__":
    main("prm")
