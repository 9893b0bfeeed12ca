"""How long cm2_env.toolcalls.parse takes on typical actions (microseconds per call, median of repeats).

Run: .venv/bin/python benchmarks/perf/toolcalls_speed.py [--number 20000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import timeit

from cm2_env.toolcalls import parse, render_hermes, render_openai, to_assistant_message

_CALL = {"name": "QueryCalendar", "arguments": {"start_time": "2023-09-12 00:00:00",
                                                "end_time": "2023-09-12 23:59:59",
                                                "session_token": "98a5a87a-7714-b404-f9b1-b9c8c3b3d0ac"}}
CASES = {
    "final reply": ("<think>\nThe user wants a summary; all calls are done.\n</think>\n\n"
                    "Your meeting is booked for 10am."),
    "one call + thinking": render_hermes([_CALL], thinking="I need the user's calendar for that day first."),
    "three calls": render_hermes([_CALL, {"name": "GetWeather", "arguments": {"city": "Paris"}},
                                  {"name": "LogoutUser", "arguments": {}}], content="Let me check."),
    "malformed call": '<tool_call>\n{"name": "QueryCalendar", "arguments": {"start_time": "2023-09-12"\n</tool_call>',
    "openai tool_calls": None,  # measured with tool_calls= below
}
_OPENAI_CALLS = render_openai([_CALL, {"name": "GetWeather", "arguments": {"city": "Paris"}}])


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--number", type=int, default=20000)
    cli.add_argument("--repeat", type=int, default=7)
    args = cli.parse_args()
    print(f"{'case':<24}{'chars':>7}{'µs/parse':>10}{'µs/parse+message':>18}")
    for name, text in CASES.items():
        if text is None:
            run = lambda: parse(None, tool_calls=_OPENAI_CALLS)  # noqa: E731
            chars = 0
        else:
            run = lambda text=text: parse(text)  # noqa: E731
            chars = len(text)
        both = lambda run=run: to_assistant_message(run())  # noqa: E731
        per_parse = statistics.median(timeit.repeat(run, number=args.number, repeat=args.repeat)) / args.number
        per_both = statistics.median(timeit.repeat(both, number=args.number, repeat=args.repeat)) / args.number
        print(f"{name:<24}{chars:>7}{per_parse * 1e6:>10.1f}{per_both * 1e6:>18.1f}")


if __name__ == "__main__":
    main()
