"""The checklist reward engine on hand-worked examples (paper Eq. 2-10; issue 3 semantics).

The main example, used by several tests, is a two-turn dialogue with dependencies:

    turn 0: A (w .4), B (w .3, depends on A), C (w .3)
    turn 1: D (w .5), E (w .5, depends on D)

    rollout 0 reaches both turns
      turn 0, M = 3, first_satisfied A=2, B=3, C=1
        x0 = {}, x1 = {C}, x2 = {C, A}, x3 = {C, A, B}
        r:  a=1 pays C (.3); a=2 pays A (.4); a=3 pays B (.3, its dependency A is in x2)  -> R_0 = 1.0
        E:  E1 = {A, C} (B waits for A), E2 = {A}, E3 = {B}
        r~: a=1 A=1 (backfill: A is first satisfied later, at a=2) and C=1; a=2 A=1; a=3 B=1
      turn 1, M = 2, first_satisfied D=2, E=2
        r:  a=2 pays D (.5); E is satisfied in the same action as its dependency D, so it never pays -> R_1 = .5
        E:  E1 = {D}, E2 = {D}                                 R = (1.0 + .5) / 2 = .75
    rollout 1 ends after turn 0 (strictness)
      turn 0, M = 2, first_satisfied A=None, B=1, C=2
        r:  a=2 pays C (.3); B is satisfied but A never is, so B never pays and is never eligible -> R_0 = .3
        E:  E1 = {A, C}, E2 = {A, C}                           R = .3 / 2 = .15 ("reference"), .3 ("reached")
    rollout 2 failed (excluded from every statistic; all its results are null)

    F_norm "none", L "reference":
      trajectory: mean(.75, .15) = .45 -> A = +.3, -.3
      turn 0: mean(1.0, .3) = .65 -> +.35, -.35;  turn 1: one value only -> 0
      step baselines (G = 2 live): b(A) = .5, b(B) = .5, b(C) = 1, b(D) = .5 (rollout 1 never reached turn 1), b(E) = 0
      item advantages r~ - b: rollout 0: A .5, B .5, C 0, D .5;  rollout 1: A -.5, C 0
      rollout 0 turn 0: a=1 (.4*.5 + .3*0)/.7 = 2/7, a=2 .5, a=3 .5;  turn 1: a=1 .5, a=2 .5
      rollout 1 turn 0: a=1 (.4*(-.5) + .3*0)/.7 = -2/7, a=2 -2/7
"""

import math

import pytest

from cm2_env.reward import (
    ASSIGNMENT_MODES,
    Item,
    RewardAssignment,
    Rollout,
    TurnHistory,
    TurnRewardState,
    VariantTurnRewardState,
    advantages_per_action,
    replay_histories,
    reward_assignment,
    score_group,
    trajectory_reward,
)
from tests.support.reward_oracle import (
    action_reward,
    action_rewards,
    backfilled_rewards,
    eligible_sets,
    payouts,
    step_rewards,
    turn_reward,
    variant_action_rewards,
)

TURN0 = [
    {"id": "A", "weight": 0.4, "dependence": []},
    {"id": "B", "weight": 0.3, "dependence": ["A"]},
    {"id": "C", "weight": 0.3},
]
TURN1 = [("D", 0.5), ("E", 0.5, ["D"])]  # tuples are accepted too
ROLLOUTS = [
    {"failed": False, "turns": [
        {"steps": 3, "first_satisfied": {"A": 2, "B": 3, "C": 1}},
        {"steps": 2, "first_satisfied": {"D": 2, "E": 2}},
    ]},
    {"failed": False, "turns": [{"steps": 2, "first_satisfied": {"A": None, "B": 1, "C": 2}}]},
    {"failed": True, "turns": []},
]


def approx(x):
    return pytest.approx(x, abs=1e-12)


def scored(turns, rollouts, L="reference", **options):
    """score_group of bare verdict histories, the way `cm2 reward compute` scores them."""
    return score_group(replay_histories(turns, rollouts, L=L), **options)


def test_step_rewards_pay_each_item_once_after_its_dependencies():
    assert step_rewards(TURN0, {"A": 2, "B": 3, "C": 1}, 3) == [[0, 0, 1], [1, 0, 0], [0, 1, 0]]
    assert action_rewards(TURN0, {"A": 2, "B": 3, "C": 1}, 3) == approx([0.3, 0.4, 0.3])
    assert turn_reward(TURN0, {"A": 2, "B": 3, "C": 1}, 3) == approx(1.0)


def test_an_item_satisfied_in_the_same_action_as_its_dependency_never_pays():
    assert step_rewards(TURN1, {"D": 2, "E": 2}, 2) == [[0, 0], [1, 0]]
    assert turn_reward(TURN1, {"D": 2, "E": 2}, 2) == approx(0.5)
    state = TurnRewardState(TURN1)
    assert [state.step([]), state.step(["D", "E"]), state.step(["D", "E"])] == [0.0, 0.5, 0.0]
    assert state.first_satisfied == {"D": 2, "E": 2}


def test_an_item_whose_dependency_is_never_satisfied_never_pays_and_is_never_eligible():
    first = {"A": None, "B": 1, "C": 2}
    assert step_rewards(TURN0, first, 2) == [[0, 0, 0], [0, 0, 1]]
    assert eligible_sets(TURN0, first, 2) == [{"A", "C"}, {"A", "C"}]


def test_eligible_sets_and_backfill_credit_every_action_that_could_still_earn_an_item():
    first = {"A": 2, "B": 3, "C": 1}
    assert eligible_sets(TURN0, first, 3) == [{"A", "C"}, {"A"}, {"B"}]
    # A is first satisfied at a=2, yet a=1 (when A was already eligible) is backfilled with r~ = 1
    assert backfilled_rewards(TURN0, first, 3) == [[1, 0, 1], [1, 0, 0], [0, 1, 0]]
    # an item never satisfied is eligible but backfills nothing
    assert backfilled_rewards(TURN0, {"A": None, "B": None, "C": None}, 2) == [[0, 0, 0], [0, 0, 0]]


def test_trajectory_reward_divides_by_reference_or_reached_turns():
    assert trajectory_reward([1.0, 0.5], n_reference_turns=2) == approx(0.75)
    assert trajectory_reward([0.3], n_reference_turns=2, L="reference") == approx(0.15)
    assert trajectory_reward([0.3], n_reference_turns=2, L="reached") == approx(0.3)
    assert trajectory_reward([], n_reference_turns=2, L="reached") == 0.0
    with pytest.raises(ValueError, match="L must be one of"):
        trajectory_reward([0.3], n_reference_turns=2, L="turns")


def test_the_two_turn_group_gives_the_hand_worked_rewards_and_advantages():
    score = scored([TURN0, TURN1], ROLLOUTS, L="reference", f_norm="none")
    r0, r1, r2 = score.rollouts
    assert r0.R == approx(0.75) and r1.R == approx(0.15)
    assert r0.turn_rewards == approx([1.0, 0.5]) and r1.turn_rewards == approx([0.3])
    assert r0.action_rewards == [approx([0.3, 0.4, 0.3]), approx([0.0, 0.5])]
    assert r1.action_rewards == [approx([0.0, 0.3])]
    assert (r0.adv_traj, r1.adv_traj) == (approx(0.3), approx(-0.3))
    assert r0.adv_turn == approx([0.35, 0.0]) and r1.adv_turn == approx([-0.35])
    assert r0.adv_step == [approx([2 / 7, 0.5, 0.5]), approx([0.5, 0.5])]
    assert r1.adv_step == [approx([-2 / 7, -2 / 7])]
    assert r2.to_json() == {
        "failed": True, "R": None, "turn_rewards": None, "action_rewards": None,
        "adv_traj": None, "adv_turn": None, "adv_step": None,
    }


def test_l_reached_changes_only_the_trajectory_reward_of_a_rollout_that_ended_early():
    score = scored([TURN0, TURN1], ROLLOUTS, L="reached", f_norm="none")
    assert [r.R for r in score.rollouts[:2]] == [approx(0.75), approx(0.3)]
    assert [r.adv_traj for r in score.rollouts[:2]] == [approx(0.225), approx(-0.225)]
    assert score.rollouts[0].adv_step == scored([TURN0, TURN1], ROLLOUTS, L="reference").rollouts[0].adv_step


def test_std_normalisation_divides_by_the_sample_std_plus_epsilon():
    score = scored([TURN0, TURN1], ROLLOUTS, f_norm="std")
    s = math.sqrt(2 * 0.3**2)  # sample std (ddof 1) of .75 and .15
    assert score.rollouts[0].adv_traj == approx(0.3 / (s + 1e-6))
    # step: b(A) = .5 over G = 2 indicators {1, 0}: s = sqrt(.5); C was earned by all, s = 0 -> advantage 0
    sa = math.sqrt(0.5) + 1e-6
    assert score.rollouts[0].adv_step[0] == approx([(0.4 * 0.5 / sa) / 0.7, 0.5 / sa, 0.5 / sa])


def test_failed_rollouts_are_excluded_from_every_statistic():
    without_failed = scored([TURN0, TURN1], ROLLOUTS[:2]).to_json()["rollouts"]
    with_failed = scored([TURN0, TURN1], [ROLLOUTS[2], *ROLLOUTS[:2], ROLLOUTS[2]]).to_json()["rollouts"]
    assert with_failed[1:3] == without_failed
    assert [r.adv_traj for r in scored([TURN0], [ROLLOUTS[2], ROLLOUTS[1], ROLLOUTS[2]]).rollouts] == [None, 0.0, None]


def test_a_single_live_rollout_gets_zero_advantages():
    score = scored([TURN0, TURN1], [ROLLOUTS[0], ROLLOUTS[2]], f_norm="std")
    assert score.rollouts[0].adv_traj == 0.0
    assert score.rollouts[0].adv_turn == [0.0, 0.0]
    assert score.rollouts[0].adv_step == [[0.0] * 3, [0.0] * 2]


def test_minimum_group_count_zeroes_small_statistics_and_drops_rarely_eligible_items():
    """One turn, X (w .5), Y (w .5, depends on X), three live rollouts:

        rollout 0: M=2, X=1, Y=2 -> pays X at 1, Y at 2;  E1 = {X}, E2 = {Y}
        rollout 1: M=1, X=1      -> pays X;                E1 = {X}
        rollout 2: M=2, X never  -> pays nothing;          E1 = E2 = {X}
        b(X) = 2/3, b(Y) = 1/3; Y is eligible in 1 rollout, X in 3.
        min_group_count 0: rollout 0 step advantages [1 - 2/3, 1 - 1/3] = [1/3, 2/3]
        min_group_count 3: Y is left out of E2 -> [1/3, 0]; trajectory statistics (3 values) are kept
        min_group_count 4: every statistic has fewer than 4 values -> all advantages 0
    """
    items = [{"id": "X", "weight": 0.5}, {"id": "Y", "weight": 0.5, "dependence": ["X"]}]
    rollouts = [
        Rollout([TurnHistory(2, {"X": 1, "Y": 2})]),
        Rollout([TurnHistory(1, {"X": 1})]),
        Rollout([TurnHistory(2, {})]),
    ]
    assert scored([items], rollouts).rollouts[0].adv_step == [approx([1 / 3, 2 / 3])]
    kept = scored([items], rollouts, min_group_count=3)
    assert kept.rollouts[0].adv_step == [approx([1 / 3, 0.0])]
    assert kept.rollouts[0].adv_traj == approx(1.0 - 0.5)  # R = 1, .5, 0
    dropped = scored([items], rollouts, min_group_count=4)
    assert [r.adv_traj for r in dropped.rollouts] == [0.0] * 3
    assert all(a == 0.0 for r in dropped.rollouts for turn in r.adv_step for a in turn)
    assert [r.adv_turn for r in dropped.rollouts] == [[0.0]] * 3


def test_the_payout_oracle_sums_every_mode_to_the_trajectory_reward():
    per_turn = [[0.3, 0.4, 0.3], [0.0, 0.5]]
    assert payouts(per_turn, 2, "step") == [approx([0.15, 0.2, 0.15]), approx([0.0, 0.25])]
    assert payouts(per_turn, 2, "turn") == [approx([0.0, 0.0, 0.5]), approx([0.0, 0.25])]
    assert payouts(per_turn, 2, "trajectory") == [approx([0.0, 0.0, 0.0]), approx([0.0, 0.75])]
    assert payouts([[0.3], []], 2, "trajectory") == [approx([0.15]), []]


def _pay(assignment, per_turn, divisor):
    """What ``assignment`` pays after each action of an episode with these action rewards (as the env asks)."""
    paid, out, last_turn = 0.0, [], max(t for t, turn in enumerate(per_turn) if turn)
    for t, turn in enumerate(per_turn):
        out.append([])
        for a, reward in enumerate(turn):
            end = t == last_turn and a == len(turn) - 1
            amount = assignment.payment(reward, sum(turn[: a + 1]), turn_ended=a == len(turn) - 1, episode_ended=end,
                                        divisor=divisor, R=sum(map(sum, per_turn)) / divisor, paid=paid)
            paid += amount
            out[-1].append(amount)
    return out


@pytest.mark.parametrize("mode", ASSIGNMENT_MODES)
def test_reward_assignments_pay_what_the_literal_payout_schedule_says(mode):
    per_turn = [[0.3, 0.4, 0.3], [0.0, 0.5]]
    assert _pay(reward_assignment(mode), per_turn, 2) == [approx(row) for row in payouts(per_turn, 2, mode)]
    assert reward_assignment(mode).name == mode


def test_a_custom_reward_assignment_is_composed_in_and_still_pays_r_in_total():
    class Halves(RewardAssignment):
        """Pays half of each action's share now; the env settles the rest at the end."""

        name = "halves"

        def interim(self, action_reward, turn_reward, turn_ended, divisor):
            return action_reward / divisor / 2

    paid = _pay(Halves(), [[0.3, 0.4, 0.3], [0.0, 0.5]], 2)
    assert paid[0] == approx([0.075, 0.1, 0.075]) and sum(map(sum, paid)) == approx(0.75)
    assert reward_assignment(Halves()).name == "halves"
    with pytest.raises(ValueError, match="reward_assignment must be one of"):
        reward_assignment("episode")


def test_turn_reward_state_replays_the_hand_worked_turn():
    state = TurnRewardState(TURN0)
    assert state.step(["C"]) == approx(0.3)
    assert state.step({"A"}) == approx(0.4)  # sticky: C may be left out
    assert state.satisfied == {"A", "C"} and state.paid == {"C": 1, "A": 2}
    assert state.step(["A", "B", "C"]) == approx(0.3)
    assert state.first_satisfied == {"A": 2, "B": 3, "C": 1}
    assert state.turn_reward == approx(1.0) and state.action_rewards == approx([0.3, 0.4, 0.3])
    with pytest.raises(ValueError, match="not items of this turn"):
        state.step(["Z"])
    assert state.actions == 3  # a rejected call changes nothing


def test_action_reward_takes_the_sets_before_and_after_an_action():
    assert action_reward(TURN0, set(), {"A", "B"}) == approx(0.4)  # B's dependency A is not in x_{a-1}
    assert action_reward(TURN0, {"A"}, {"B"}) == approx(0.3)  # sticky: A stays satisfied
    assert action_reward(TURN0, {"A", "B"}, {"A", "B"}) == 0.0


def test_checklist_item_objects_work_like_dicts():
    from cm2_env.data.models import ChecklistItem

    objects = [
        ChecklistItem(id="A", focus_on="tool.content", question="q", weight=0.4),
        ChecklistItem(id="B", focus_on="tool.content", question="q", weight=0.6, dependence=["A"]),
    ]
    assert step_rewards(objects, {"A": 1, "B": 2}, 2) == [[1, 0], [0, 1]]
    assert TurnRewardState(objects).step(["A"]) == approx(0.4)
    assert step_rewards([Item("A", 1.0)], [1], 1) == [[1]]  # first_satisfied aligned with the items


def test_malformed_inputs_raise_value_errors_that_say_what_is_wrong():
    with pytest.raises(ValueError, match="duplicate item ids"):
        scored([[("A", 0.5), ("A", 0.5)]], [])
    with pytest.raises(ValueError, match="not items of the same turn"):
        step_rewards([("A", 1.0, ["Q"])], {}, 1)
    with pytest.raises(ValueError, match="rollout 0, turn 0: first_satisfied names ids"):
        scored([TURN0], [{"turns": [{"steps": 1, "first_satisfied": {"Q": 1}}]}])
    with pytest.raises(ValueError, match=r"rollout 1, turn 0: steps must be >= 0 .* 0..steps \(1\)"):
        scored([TURN0], [ROLLOUTS[1], {"turns": [{"steps": 1, "first_satisfied": {"A": 2}}]}])
    with pytest.raises(ValueError, match="reached 2 turns but the reference has 1"):
        scored([TURN0], [ROLLOUTS[0]])


def test_score_group_rejects_records_it_cannot_trust_and_names_the_rollout():
    good = replay_histories([TURN0, TURN1], ROLLOUTS[:2])
    with pytest.raises(ValueError, match="rollout 1: the reward record has no 'action_rewards'"):
        score_group([good[0], {"failed": False, "turns": [], "R": 0.0, "reference_turns": 2}])
    reweighted = [{**item, "weight": w} for item, w in zip(TURN0, (0.5, 0.3, 0.2))]
    other = replay_histories([reweighted, TURN1], ROLLOUTS[1:2])
    with pytest.raises(ValueError, match="rollout 1, turn 0: checklist variant 0 differs"):
        score_group([good[0], other[0]])
    with pytest.raises(ValueError, match="share the reference dialogue; their records count"):
        score_group([good[0], replay_histories([TURN0], ROLLOUTS[1:2])[0]])
    forged = {**good[1], "turns": [{"steps": 2, "checklists": [{**good[1]["turns"][0]["checklists"][0],
                                                                  "paid": {"C": 1}}]}]}
    with pytest.raises(ValueError, match="rollout 1, turn 0: .*paid at the action where it was first satisfied"):
        score_group([good[0], forged])
    assert score_group([{"failed": True}, good[0]]).rollouts[0].failed  # a failed record needs nothing else


VARIANT_ITEMS = [{"id": "P", "weight": 0.5}, {"id": "Q", "weight": 0.5}]


def test_variants_average_their_action_rewards_by_default():
    """Three variants of one turn (M = 2): v0 pays P at 1; v1 pays P at 1 and Q at 2; v2 pays Q at 2.

    mean:     [(.5 + .5 + 0)/3, (0 + .5 + .5)/3] = [1/3, 1/3]
    majority: P is paid by 2 of 3 variants (by action 1), Q by 2 of 3 (by action 2) -> [.5, .5]
    """
    variants = [(VARIANT_ITEMS, {"P": 1}), (VARIANT_ITEMS, {"P": 1, "Q": 2}), (VARIANT_ITEMS, {"Q": 2})]
    assert variant_action_rewards(variants, 2) == approx([1 / 3, 1 / 3])
    assert variant_action_rewards(variants, 2, how="majority") == approx([0.5, 0.5])


def test_majority_pays_an_item_at_the_action_by_which_most_variants_paid_it_with_its_mean_weight():
    """P weighs .2/.4/.6 in the three variants (mean .4) and is paid at actions 3, 1, never -> by action 3."""
    variants = [
        ([("P", 0.2), ("Q", 0.8)], {"P": 3}),
        ([("P", 0.4), ("Q", 0.6)], {"P": 1, "Q": 1}),
        ([("P", 0.6), ("Q", 0.4)], {"Q": 2}),
    ]
    assert variant_action_rewards(variants, 3, how="majority") == approx([0.0, 0.6, 0.4])
    online = VariantTurnRewardState([items for items, _ in variants], how="majority")
    verdicts = [[set(), {"P", "Q"}, set()], [set(), set(), {"Q"}], [{"P"}, set(), set()]]
    assert [online.step(v) for v in verdicts] == approx([0.0, 0.6, 0.4])
    with pytest.raises(ValueError, match="same item ids in every variant"):
        variant_action_rewards([([("P", 1.0)], {}), ([("R", 1.0)], {})], 1, how="majority")


def test_advantages_are_laid_onto_the_actions_of_an_episode_in_order():
    counts = [3, 2]
    assert advantages_per_action(counts, 0.3, "trajectory") == [0.3] * 5
    assert advantages_per_action(counts, [0.35, -0.1], "turn") == [0.35, 0.35, 0.35, -0.1, -0.1]
    assert advantages_per_action(counts, [[1, 2, 3], [4, 5]], "step") == [1, 2, 3, 4, 5]
    assert advantages_per_action(counts, None, "step") is None
    with pytest.raises(ValueError, match="turn 1: 1 step advantages for 2 actions"):
        advantages_per_action(counts, [[1, 2, 3], [4]], "step")
    with pytest.raises(ValueError, match="cover 1 turns but the episode reached 2"):
        advantages_per_action(counts, [0.1], "turn")
