"""Properties of the checklist reward engine over random groups (hypothesis).

A brute-force reference, written straight from the paper's definitions on top of the literal per-turn oracles
(``tests/support/reward_oracle.py``: ``step_rewards``, ``eligible_sets``, ``backfilled_rewards``) and the
``statistics`` module, checks the production path -- verdict histories replayed through the environment's
:class:`TurnRewardState` into reward records, scored by the vectorised :func:`score_group`; the other properties
are the ones the paper's equations promise.
"""

import math
import statistics

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cm2_env.reward import (
    ASSIGNMENT_MODES,
    TurnRewardState,
    VariantTurnRewardState,
    normaliser,
    replay_histories,
    reward_assignment,
    score_group,
)
from tests.support.reward_oracle import (
    action_rewards,
    backfilled_rewards,
    eligible_sets,
    payouts,
    step_rewards,
    variant_action_rewards,
)

EPS = 1e-6
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def turn_items(draw, prefix="C"):
    n = draw(st.integers(1, 5))
    raw = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n).filter(lambda ws: sum(ws) > 0))
    ids = [f"{prefix}{k}" for k in range(n)]
    items = []
    for k, w in enumerate(raw):
        # any other item may be a dependency (cycles included: such items simply never pay)
        deps = draw(st.lists(st.sampled_from(ids), max_size=2, unique=True).map(lambda ds, me=ids[k]: [d for d in ds if d != me]))
        items.append({"id": ids[k], "weight": w / sum(raw), "dependence": deps})
    return items


@st.composite
def history(draw, items):
    steps = draw(st.integers(0, 5))
    values = st.none() | st.integers(0, steps) if steps else st.none() | st.just(0)
    first = {item["id"]: draw(values) for item in items}
    return {"steps": steps, "first_satisfied": first}


@st.composite
def groups(draw, min_live=0):
    turns = draw(st.lists(turn_items(), min_size=1, max_size=3))
    size = draw(st.integers(max(1, min_live), 7))
    rollouts = []
    for i in range(size):
        reached = draw(st.integers(0, len(turns)))
        failed = i >= min_live and draw(st.booleans()) and draw(st.booleans())
        rollouts.append({"failed": failed, "turns": [draw(history(turns[t])) for t in range(reached)]})
    return turns, rollouts


def reference(turns, rollouts, L, f_norm, min_count=0):
    """Rewards and advantages from the issue's definitions, one loop per symbol."""
    live = [i for i, r in enumerate(rollouts) if not r["failed"]]
    G = len(live)

    def normalise(x, xs):
        if len(xs) < max(2, min_count):
            return 0.0
        return (x - statistics.fmean(xs)) / ((statistics.stdev(xs) + EPS) if f_norm == "std" else 1.0)

    earned = {}  # (i, t) -> list of 0/1 per item: did rollout i earn item c in turn t
    out = {}
    for i in live:
        turn_r, action_r = [], []
        for t, h in enumerate(rollouts[i]["turns"]):
            r = step_rewards(turns[t], h["first_satisfied"], h["steps"])
            earned[i, t] = [max((row[k] for row in r), default=0) for k in range(len(turns[t]))]
            action_r.append(action_rewards(turns[t], h["first_satisfied"], h["steps"]))
            turn_r.append(sum(action_r[-1]))
        divisor = normaliser(L, len(turns), len(turn_r))
        out[i] = {"R": sum(turn_r) / divisor if divisor else 0.0, "turn_rewards": turn_r, "action_rewards": action_r}
    all_R = [out[i]["R"] for i in live]
    for i in live:
        out[i]["adv_traj"] = normalise(out[i]["R"], all_R)
        out[i]["adv_turn"] = [
            normalise(R_t, [out[j]["turn_rewards"][t] for j in live if len(out[j]["turn_rewards"]) > t])
            for t, R_t in enumerate(out[i]["turn_rewards"])
        ]
        adv_step = []
        for t, h in enumerate(rollouts[i]["turns"]):
            items = turns[t]
            indicators = [[earned.get((j, t), [0] * len(items))[k] for j in live] for k in range(len(items))]
            ever_eligible = [
                set().union(*eligible_sets(items, rollouts[j]["turns"][t]["first_satisfied"], rollouts[j]["turns"][t]["steps"]))
                for j in live if (j, t) in earned
            ]
            eligible_in = [sum(c["id"] in e for e in ever_eligible) for c in items]
            E = eligible_sets(items, h["first_satisfied"], h["steps"])
            rt = backfilled_rewards(items, h["first_satisfied"], h["steps"])
            row = []
            for a in range(h["steps"]):
                num = den = 0.0
                for k, c in enumerate(items):
                    if c["id"] not in E[a] or (min_count and eligible_in[k] < min_count):
                        continue
                    b = statistics.fmean(indicators[k])
                    if G < max(2, min_count):
                        A = 0.0
                    else:
                        A = (rt[a][k] - b) / ((statistics.stdev(indicators[k]) + EPS) if f_norm == "std" else 1.0)
                    num += c["weight"] * A
                    den += c["weight"]
                row.append(num / den if den > 0 else 0.0)
            adv_step.append(row)
        out[i]["adv_step"] = adv_step
    return out


def scored(turns, rollouts, L="reference", **options):
    return score_group(replay_histories(turns, rollouts, L=L), **options)


def close(a, b, tol=1e-9):
    if isinstance(a, list):
        return len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


@FAST
@given(groups(), st.sampled_from(["reference", "reached"]), st.sampled_from(["std", "none"]), st.sampled_from([0, 0, 3]))
def test_score_group_matches_the_literal_definitions(group, L, f_norm, min_count):
    turns, rollouts = group
    expected = reference(turns, rollouts, L, f_norm, min_count)
    for i, got in enumerate(scored(turns, rollouts, L, f_norm=f_norm, min_group_count=min_count).rollouts):
        if rollouts[i]["failed"]:
            assert got.R is None and got.adv_step is None
            continue
        for key, value in expected[i].items():
            # std advantages divide by s + 1e-6, which magnifies float noise when s is tiny
            tol = 1e-9 if f_norm == "none" else 1e-6
            assert close(getattr(got, key), value, tol), (key, getattr(got, key), value)


@FAST
@given(groups(), st.sampled_from(["reference", "reached"]))
def test_trajectory_reward_lies_in_the_unit_interval(group, L):
    for r in scored(*group, L=L).rollouts:
        assert r.R is None or -1e-12 <= r.R <= 1 + 1e-12


@FAST
@given(turn_items().flatmap(lambda items: st.tuples(st.just(items), history(items))))
def test_an_item_pays_at_most_once_and_only_after_its_dependencies(case):
    items, h = case
    rows = step_rewards(items, h["first_satisfied"], h["steps"])
    first = h["first_satisfied"]
    for k, item in enumerate(items):
        assert sum(row[k] for row in rows) <= 1
        if any(first[d] is None for d in item["dependence"]):
            assert all(row[k] == 0 for row in rows)
        for a, row in enumerate(rows, start=1):
            if row[k]:
                assert all(first[d] is not None and first[d] < a for d in item["dependence"])


@FAST
@given(turn_items().flatmap(lambda items: st.tuples(st.just(items), history(items))), st.data())
def test_an_item_whose_dependencies_are_never_satisfied_never_pays(case, data):
    items, h = case
    gated = [item for item in items if item["dependence"]]
    if not gated:
        return
    item = data.draw(st.sampled_from(gated))
    first = dict(h["first_satisfied"], **{item["dependence"][0]: None})
    k = items.index(item)
    assert all(row[k] == 0 for row in step_rewards(items, first, h["steps"]))
    score = scored([items], [{"turns": [{"steps": h["steps"], "first_satisfied": first}]}])
    assert close(score.rollouts[0].action_rewards[0], action_rewards(items, first, h["steps"]), 1e-12)
    assert score.rollouts[0].turn_rewards[0] <= 1 - item["weight"] + 1e-12


@FAST
@given(groups(), st.sampled_from(["reference", "reached"]))
def test_every_reward_assignment_pays_the_literal_schedule_and_sums_to_r(group, L):
    turns, rollouts = group
    for raw, r in zip(rollouts, scored(turns, rollouts, L=L).rollouts):
        if r.failed or not any(r.action_rewards):
            continue
        divisor = normaliser(L, len(turns), len(raw["turns"]))
        last = max(t for t, turn in enumerate(r.action_rewards) if turn)
        for mode in ASSIGNMENT_MODES:
            assignment, paid, got = reward_assignment(mode), 0.0, []
            for t, turn in enumerate(r.action_rewards):
                got.append([])
                for a, reward in enumerate(turn):
                    # like the env, earlier payments use L over the turns reached so far
                    so_far = normaliser(L, len(turns), t + 1)
                    amount = assignment.payment(reward, sum(turn[: a + 1]), turn_ended=a == len(turn) - 1,
                                                episode_ended=(t, a) == (last, len(turn) - 1), divisor=so_far,
                                                R=r.R, paid=paid)
                    paid += amount
                    got[-1].append(amount)
            assert math.isclose(paid, r.R, abs_tol=1e-12)
            if L == "reference":  # with "reached", L is only known at the end, so the schedule differs
                assert close(got, payouts(r.action_rewards, divisor, mode), 1e-12)


@FAST
@given(groups(min_live=2), st.sampled_from(["std", "none"]))
def test_group_advantages_have_mean_zero_and_unit_sample_std(group, f_norm):
    turns, rollouts = group
    score = scored(turns, rollouts, f_norm=f_norm)
    live = [r for r in score.rollouts if not r.failed]
    samples = [[r.adv_traj for r in live], [r.R for r in live]]
    for t in range(len(turns)):
        reached = [r for r in live if len(r.turn_rewards) > t]
        samples += [[r.adv_turn[t] for r in reached], [r.turn_rewards[t] for r in reached]]
    for advantages, values in zip(samples[::2], samples[1::2]):
        if len(values) < 2:
            assert all(a == 0.0 for a in advantages)
            continue
        assert abs(statistics.fmean(advantages)) < 1e-9
        s = statistics.stdev(values)
        if f_norm == "std" and s > 1e-3:
            assert math.isclose(statistics.stdev(advantages), s / (s + EPS), rel_tol=1e-9)  # = 1 up to the epsilon
        if f_norm == "none":
            assert math.isclose(statistics.stdev(advantages), s, rel_tol=1e-9, abs_tol=1e-12)


@FAST
@given(groups(), st.sampled_from(["std", "none"]), st.randoms(use_true_random=False))
def test_permuting_the_group_permutes_the_results(group, f_norm, rng):
    turns, rollouts = group
    order = list(range(len(rollouts)))
    rng.shuffle(order)
    before = scored(turns, rollouts, f_norm=f_norm).to_json()["rollouts"]
    after = scored(turns, [rollouts[i] for i in order], f_norm=f_norm).to_json()["rollouts"]
    for new, old in enumerate(order):
        for key in before[old]:
            assert close(after[new][key], before[old][key], 1e-9 if f_norm == "none" else 1e-6)


@FAST
@given(groups(), st.integers(0, 7), st.sampled_from(["std", "none"]), st.data())
def test_a_failed_rollout_changes_no_other_rollouts_results(group, position, f_norm, data):
    turns, rollouts = group
    position = min(position, len(rollouts))
    ghost = {"failed": True, "turns": [data.draw(history(turns[0]))] * data.draw(st.integers(0, 5))}
    before = scored(turns, rollouts, f_norm=f_norm).to_json()["rollouts"]
    after = scored(turns, rollouts[:position] + [ghost] + rollouts[position:], f_norm=f_norm).to_json()["rollouts"]
    assert after[position]["failed"] and after[position]["adv_traj"] is None
    assert after[:position] + after[position + 1:] == before


@FAST
@given(turn_items().flatmap(lambda items: st.tuples(st.just(items), history(items))))
def test_the_incremental_state_agrees_with_the_whole_history(case):
    items, h = case
    first = h["first_satisfied"]
    state = TurnRewardState(items, already_satisfied=[c for c, f in first.items() if f == 0])
    for a in range(1, h["steps"] + 1):
        state.step([c for c, f in first.items() if f is not None and f <= a])
    assert state.first_satisfied == first
    assert close(state.action_rewards, action_rewards(items, first, h["steps"]), 1e-12)
    rows = step_rewards(items, first, h["steps"])
    assert state.paid == {item["id"]: a for a, row in enumerate(rows, start=1) for item, r in zip(items, row) if r}


@FAST
@given(turn_items(), st.integers(1, 4), st.integers(0, 4), st.sampled_from(["mean", "majority"]), st.data())
def test_online_variants_agree_with_offline_variants(items, n_variants, steps, how, data):
    histories = [data.draw(history(items)) for _ in range(n_variants)]
    firsts = [{c: (a if a is not None and 0 < a <= steps else None) for c, a in h["first_satisfied"].items()} for h in histories]
    offline = variant_action_rewards([(items, f) for f in firsts], steps, how=how)
    state = VariantTurnRewardState([items] * n_variants, how=how)
    online = [state.step([[c for c, f in first.items() if f is not None and f <= a] for first in firsts]) for a in range(1, steps + 1)]
    assert close(online, offline, 1e-12)
    assert sum(offline) <= 1 + 1e-12


def variant_record(variant_turns, histories, how, n_reference_turns):
    """The reward record the environment writes for one rollout judged against several checklist variants:
    ``histories[t][k]`` is the verdict history of variant k in reached turn t (all variants share M)."""
    turns, action_rewards_ = [], []
    for t, per_variant in enumerate(histories):
        steps = per_variant[0]["steps"]
        state = VariantTurnRewardState(variant_turns[t], how=how)
        for a in range(1, steps + 1):
            state.step([[c for c, f in h["first_satisfied"].items() if f is not None and 0 < f <= a]
                        for h in per_variant])
        turns.append({"steps": steps, "checklists": [s.history() for s in state.states]})
        action_rewards_.append(state.action_rewards)
    turn_rewards = [sum(r) for r in action_rewards_]
    return {"failed": False, "turns": turns, "R": sum(turn_rewards) / n_reference_turns, "turn_rewards": turn_rewards,
            "action_rewards": action_rewards_, "reference_turns": n_reference_turns, "L": "reference"}


@FAST
@given(st.integers(2, 3), st.integers(2, 5), st.sampled_from(["std", "none"]), st.data())
def test_with_checklist_variants_each_variant_has_its_own_baseline_and_step_advantages_are_averaged(
        n_variants, size, f_norm, data):
    n_turns = data.draw(st.integers(1, 2))
    variant_turns = [[data.draw(turn_items()) for _ in range(n_variants)] for _ in range(n_turns)]
    histories = []  # per rollout, per reached turn, per variant
    for _ in range(size):
        reached = []
        for t in range(data.draw(st.integers(1, n_turns))):
            steps = data.draw(st.integers(1, 4))
            reached.append([{"steps": steps, "first_satisfied": {
                item["id"]: data.draw(st.none() | st.integers(1, steps)) for item in items}} for items in variant_turns[t]])
        histories.append(reached)
    records = [variant_record(variant_turns, h, "mean", n_turns) for h in histories]
    got = score_group(records, f_norm=f_norm).rollouts
    per_variant = [
        scored([variant_turns[t][k] for t in range(n_turns)],
               [{"turns": [turn[k] for turn in h]} for h in histories], f_norm=f_norm).rollouts
        for k in range(n_variants)
    ]
    tol = 1e-9 if f_norm == "none" else 1e-6
    for i, rollout in enumerate(got):
        mean_step = [[statistics.fmean(per_variant[k][i].adv_step[t][a] for k in range(n_variants))
                      for a in range(len(rollout.adv_step[t]))] for t in range(len(rollout.adv_step))]
        assert close(rollout.adv_step, mean_step, tol)
        assert close(rollout.R, statistics.fmean(per_variant[k][i].R for k in range(n_variants)), 1e-12)
    R = [r.R for r in got]  # trajectory advantages come from the aggregated R
    scale = (statistics.stdev(R) + EPS) if f_norm == "std" else 1.0
    assert close([r.adv_traj for r in got], [(x - statistics.fmean(R)) / scale for x in R], tol)
