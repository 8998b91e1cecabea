"""Simulated token streams, one sequence of ``n`` token ids each (``[n]`` int64): how repetitive
text is decides the token-match band kernel's work (``bench.band_report``) and its time
(``bench.bench_kernel --tokens``, ``bench.acceptance_statistics``)."""

from __future__ import annotations

import torch

VOCAB = 50_000


def zipf_ids(n: int, vocab: int, exponent: float, gen: torch.Generator) -> torch.Tensor:
    weights = torch.arange(1, vocab + 1, dtype=torch.float64) ** -exponent
    return torch.multinomial(weights, n, replacement=True, generator=gen)


def prose(n: int, gen: torch.Generator) -> torch.Tensor:
    """Natural-language-like: i.i.d. Zipf (exponent 1.0) over a 50k vocabulary."""
    return zipf_ids(n, VOCAB, 1.0, gen)


def code(n: int, gen: torch.Generator) -> torch.Tensor:
    """Code-like: lines of 4-16 Zipf (exponent 1.2) tokens over a 20k vocabulary, each line ending
    in a newline token, 30% of the lines copies of an earlier line."""
    lines: list[torch.Tensor] = []
    total = 0
    while total < n:
        if lines and torch.rand((), generator=gen).item() < 0.3:
            line = lines[int(torch.randint(len(lines), (), generator=gen))]
        else:
            length = int(torch.randint(4, 17, (), generator=gen))
            line = torch.cat([zipf_ids(length, 20_000, 1.2, gen) + 1, torch.zeros(1, dtype=torch.long)])
        lines.append(line)
        total += len(line)
    return torch.cat(lines)[:n]


def repeated_random(n: int, gen: torch.Generator) -> torch.Tensor:
    """The induction benchmark: 512 uniformly random tokens, repeated to length n."""
    segment = torch.randint(VOCAB, (512,), generator=gen)
    return segment.repeat(-(-n // 512))[:n]


def few_tokens(n: int, gen: torch.Generator) -> torch.Tensor:
    """The worst case: 4 distinct tokens, uniformly (every band spans most keys)."""
    return torch.randint(4, (n,), generator=gen)


STREAMS = {"prose": prose, "code": code, "repeated-random": repeated_random, "4-tokens": few_tokens}


def uniform(n: int, gen: torch.Generator) -> torch.Tensor:
    """I.i.d. uniform over a 50k vocabulary: almost no token repeats (the band kernel's least work)."""
    return torch.randint(VOCAB, (n,), generator=gen)


STREAMS_AND_UNIFORM = {"uniform": uniform, **STREAMS}


def token_batch(stream: str, batch: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """``[batch, n]`` token ids, each row drawn from ``stream`` (a name of ``STREAMS_AND_UNIFORM``)."""
    if stream not in STREAMS_AND_UNIFORM:
        raise ValueError(f"stream: expected one of {list(STREAMS_AND_UNIFORM)}, got {stream!r}")
    return torch.stack([STREAMS_AND_UNIFORM[stream](n, gen) for _ in range(batch)])
