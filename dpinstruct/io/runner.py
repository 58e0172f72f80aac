"""The frame every stage's main() runs in: logging, staged outputs, clean failure.

A PipelineError (bad input, failed quality rule, unsafe privacy config) ends the process with
exit code 2 and a one-line message instead of a traceback; the staged outputs are discarded.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

from dpinstruct.io.artifacts import Outputs
from dpinstruct.io.errors import PipelineError

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the default configuration never reaches a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("DPI_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        force=True)  # some imports configure the root logger first
    # great_expectations.data_context.types.base pins itself to INFO, so name it explicitly.
    for noisy in ("great_expectations", "great_expectations.data_context.types.base", "urllib3", "filelock", "httpx",
                  "faiss.loader"):  # faiss logs a failed AVX2 import on every load
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def run_stage(name: str):
    setup_logging()
    log = logging.getLogger(f"stages.{name}")
    start = time.perf_counter()
    log.info("stage %s: start", name)
    try:
        with Outputs() as out:
            yield out
    except PipelineError as e:
        log.error("stage %s failed: %s", name, e)
        print(f"ERROR [{name}] {e}", file=sys.stderr)
        raise SystemExit(2) from e
    log.info("stage %s: done in %.1f s", name, time.perf_counter() - start)
