#!/usr/bin/env python3
"""Seeded request traces of the shapes a model-serving platform sees, for `ferry pool replay`.

Each trace is a CSV in the Azure LLM inference trace format (TIMESTAMP,ContextTokens,
GeneratedTokens; timestamps from 2026-01-01 00:00:00 UTC), so it replays like the real ones.
The same shape and seed always give the same trace (Python's `random.Random`, stdlib only).

    python3 bench/replay/generate.py SHAPE [--seed N] [--minutes M] > trace.csv
    python3 bench/replay/generate.py --all DIR [--seed N]      # every shape, DIR/SHAPE.csv

Shapes (token sizes are lognormal, clipped; arrivals are Poisson at a rate that changes with
time, so every shape has its own randomness on top of its outline):
  long-context  chat with long documents: prompts 5k-100k tokens (median 9k), outputs ~250,
                1.2 requests/s drifting slowly between half and one and a half times that
  bursty-code   code completion: prompts ~1.5k, outputs ~15, quiet (0.5/s) between bursts of
                ~20 s at 12/s
  diurnal       a day's ramp squeezed into the run: 0.2/s at the ends, 4/s at the middle,
                chat-sized requests (prompts ~1k, outputs ~200)
  flash-crowd   chat at 0.5/s, then at a third of the run a crowd: 15/s within 10 s, fading
                with a time constant of 3 minutes
  batch         one tenant's batch job: a trickle of 0.05/s, and 3,000 requests sent within a
                minute at a sixth of the run (prompts ~800, outputs ~300)
  idle-gaps     sessions of 5-30 requests over one to three minutes, with idle gaps of ten
                minutes on average between them: scale-to-zero territory
"""

import argparse
import datetime
import math
import pathlib
import random
import sys

START = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def lognormal(rng, median, sigma, low, high):
    return int(min(max(rng.lognormvariate(math.log(median), sigma), low), high))


def poisson(rng, rate, seconds, step=1.0):
    """Arrival times of a Poisson process whose rate (a function of time, per second) is
    looked up once per `step` seconds: thinning against the step's rate."""
    times = []
    t = 0.0
    while t < seconds:
        r = max(rate(t), 0.0)
        end = min(t + step, seconds)
        if r > 0:
            at = t + rng.expovariate(r)
            while at < end:
                times.append(at)
                at += rng.expovariate(r)
        t = end
    return times


def long_context(rng, seconds):
    # A slow random drift of the rate: sessions of long documents come and go.
    level = [1.0]

    def rate(t):
        level[0] = min(max(level[0] + rng.gauss(0, 0.02), 0.5), 1.5)
        return 1.2 * level[0]

    return [(t, lognormal(rng, 9_000, 0.9, 5_000, 100_000), lognormal(rng, 250, 0.8, 1, 4_000))
            for t in poisson(rng, rate, seconds)]


def bursty_code(rng, seconds):
    # Two states, quiet and burst, each lasting an exponential time.
    bursts = []
    t = rng.expovariate(1 / 90)
    while t < seconds:
        length = rng.expovariate(1 / 20)
        bursts.append((t, t + length))
        t += length + rng.expovariate(1 / 90)

    def rate(t):
        return 12.0 if any(start <= t < end for start, end in bursts) else 0.5

    return [(t, lognormal(rng, 1_500, 0.8, 50, 8_000), lognormal(rng, 15, 0.9, 1, 200))
            for t in poisson(rng, rate, seconds, step=0.5)]


def diurnal(rng, seconds):
    def rate(t):
        return 0.2 + 3.8 * (1 - math.cos(2 * math.pi * t / seconds)) / 2

    return [(t, lognormal(rng, 1_000, 0.9, 10, 16_000), lognormal(rng, 200, 0.8, 1, 2_000))
            for t in poisson(rng, rate, seconds)]


def flash_crowd(rng, seconds):
    onset = seconds / 3

    def rate(t):
        if t < onset:
            return 0.5
        rise = min((t - onset) / 10, 1.0)
        return 0.5 + 14.5 * rise * math.exp(-(t - onset) / 180)

    return [(t, lognormal(rng, 1_000, 0.9, 10, 16_000), lognormal(rng, 200, 0.8, 1, 2_000))
            for t in poisson(rng, rate, seconds)]


def batch(rng, seconds):
    trickle = [(t, lognormal(rng, 1_000, 0.9, 10, 16_000), lognormal(rng, 200, 0.8, 1, 2_000))
               for t in poisson(rng, lambda t: 0.05, seconds)]
    start = seconds / 6
    job = [(start + rng.uniform(0, 60), lognormal(rng, 800, 0.6, 20, 8_000), lognormal(rng, 300, 0.6, 1, 2_000))
           for _ in range(3_000)]
    return trickle + job


def idle_gaps(rng, seconds):
    requests = []
    t = rng.expovariate(1 / 600)
    while t < seconds:
        length = rng.uniform(60, 180)
        count = rng.randint(5, 30)
        for _ in range(count):
            requests.append((t + rng.uniform(0, length), lognormal(rng, 1_000, 0.9, 10, 16_000),
                             lognormal(rng, 200, 0.8, 1, 2_000)))
        t += length + rng.expovariate(1 / 600)
    return requests


SHAPES = {
    "long-context": (long_context, 60),
    "bursty-code": (bursty_code, 60),
    "diurnal": (diurnal, 60),
    "flash-crowd": (flash_crowd, 60),
    "batch": (batch, 60),
    "idle-gaps": (idle_gaps, 120),
}


def generate(shape, seed, minutes=None):
    make, default_minutes = SHAPES[shape]
    # Each shape draws from its own stream, so adding a shape changes no other trace.
    rng = random.Random(f"{shape}:{seed}")
    requests = sorted(make(rng, 60 * (minutes or default_minutes)))
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for at, prompt, output in requests:
        stamp = (START + datetime.timedelta(seconds=at)).strftime("%Y-%m-%d %H:%M:%S.%f")
        lines.append(f"{stamp},{prompt},{output}")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shape", nargs="?", choices=sorted(SHAPES))
    parser.add_argument("--all", metavar="DIR", help="write every shape to DIR/SHAPE.csv")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--minutes", type=float, help="length of the trace (each shape has its own default)")
    args = parser.parse_args()
    if args.all:
        directory = pathlib.Path(args.all)
        directory.mkdir(parents=True, exist_ok=True)
        for shape in SHAPES:
            (directory / f"{shape}.csv").write_text(generate(shape, args.seed, args.minutes))
    elif args.shape:
        sys.stdout.write(generate(args.shape, args.seed, args.minutes))
    else:
        parser.error("name a shape or --all DIR")


if __name__ == "__main__":
    main()
