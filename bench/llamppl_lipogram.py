"""The lipogram task written for LLaMPPL; run by ``bench/vs_llamppl.py`` in its own venv.

Prints one JSON line: CPU seconds of the SMC call, final tokens, wall seconds.
Not importable from pplscale's environment (it needs ``llamppl``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import numpy as np
import torch
from llamppl import CachedCausalLM, LMContext, Model, smc_standard


class Lipogram(Model):
    """Token-level continuation that never writes an "e"; ends like pplscale's version."""

    def __init__(self, lm, prompt: str, max_tokens: int):
        super().__init__()
        self.context = LMContext(lm, prompt)
        self.eos = lm.tokenizer.eos_token_id
        self.max_tokens = max_tokens
        self.num_tokens = 0

    async def step(self):
        token = await self.sample(self.context.next_token())
        self.num_tokens += 1
        text = "" if token.token_id == self.eos else str(token)
        self.condition("e" not in text.lower())
        if (
            token.token_id == self.eos
            or "." in text
            or "\n" in text
            or self.num_tokens >= self.max_tokens
        ):
            self.finish()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--particles", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    lm = CachedCausalLM.from_pretrained(args.model, backend="hf")
    for seed in range(args.seeds):
        np.random.seed(seed)
        torch.default_generator.manual_seed(seed)
        lm.clear_cache()
        model = Lipogram(lm, args.prompt, args.tokens)
        started, started_cpu = time.perf_counter(), time.process_time()
        particles = asyncio.run(smc_standard(model, args.particles))
        cpu = time.process_time() - started_cpu
        wall = time.perf_counter() - started
        tokens = sum(p.num_tokens for p in particles)
        print(json.dumps({"cpu_seconds": cpu, "wall_seconds": wall, "final_tokens": tokens}))


if __name__ == "__main__":
    main()
