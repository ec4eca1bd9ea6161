"""The lease plan (watcher.cluster): fair shares, takes, releases, convergence."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.cluster import RELEASE_LIMIT, LeasePlan, fair_share, plan


def servers(n: int) -> list[str]:
    """``n`` server names."""
    return [f"sklm-{i:03d}" for i in range(n)]


def apply(
    node: str, p: LeasePlan, holders: dict[str, str], live: Collection[str]
) -> bool:
    """Apply ``p`` the way the store would; return whether anything changed."""
    changed = False
    for server in p.release:
        if holders.get(server) == node:
            del holders[server]
            changed = True
    taken = 0
    for server in p.take:
        if taken >= p.take_limit:
            break
        if holders.get(server) not in live:
            holders[server] = node
            taken += 1
            changed = True
    return changed


def converge(
    names: Sequence[str],
    holders: dict[str, str],
    live: Sequence[str],
    busy: Collection[str] = (),
    max_rounds: int = 100,
) -> int:
    """Let every node apply its plan in turn until a round changes nothing."""
    for rounds in range(1, max_rounds + 1):
        changed = False
        for node in live:
            mine_busy = [s for s in busy if holders.get(s) == node]
            p = plan(node, names, holders, live, busy=mine_busy)
            changed = apply(node, p, holders, live) or changed
        if not changed:
            return rounds
    raise AssertionError(f"no fixpoint after {max_rounds} rounds")


def test_shares_add_up_and_differ_by_at_most_one() -> None:
    """Shares add up and differ by at most one."""
    nodes = ["c", "a", "b"]
    shares = {n: fair_share(n, nodes, 10) for n in nodes}
    assert shares == {"a": 4, "b": 3, "c": 3}


def test_a_lone_node_takes_every_free_server() -> None:
    """A lone node takes every free server."""
    names = servers(5)
    p = plan("a", names, {}, ["a"])
    assert sorted(p.take) == names
    assert p.take_limit == 5
    assert p.release == ()


def test_the_node_itself_counts_as_live_even_if_missing() -> None:
    """The node itself counts as live even if missing."""
    p = plan("a", servers(4), {}, ["b"])
    assert p.share == 2
    assert p.take_limit == 2


def test_servers_of_a_dead_node_are_free() -> None:
    """Servers of a dead node are free."""
    names = servers(4)
    holders = dict.fromkeys(names, "dead")
    p = plan("a", names, holders, ["a", "b"])
    assert p.take_limit == 2
    assert sorted(p.take) == names


def test_servers_held_by_live_peers_are_not_taken() -> None:
    """Servers held by live peers are not taken."""
    names = servers(4)
    holders = dict.fromkeys(names, "b")
    p = plan("a", names, holders, ["a", "b"])
    assert p.take == ()
    assert p.take_limit == 0


def test_surplus_is_released_idle_servers_first() -> None:
    """Surplus is released idle servers first."""
    names = servers(4)
    holders = dict.fromkeys(names, "a")
    busy = names[:3]
    p = plan("a", names, holders, ["a", "b"], busy=busy)
    # Share 2: two above it; the one idle server goes, then one busy (slack 1 keeps
    # one busy server above the share).
    assert names[3] in p.release
    assert len(p.release) == 1


def test_a_busy_server_goes_when_far_above_share() -> None:
    """A busy server goes when far above share."""
    names = servers(6)
    holders = dict.fromkeys(names, "a")
    p = plan("a", names, holders, ["a", "b"], busy=names)
    # Share 3, surplus 3, all busy: all but BUSY_SLACK of them are given up.
    assert len(p.release) == 2


def test_releases_are_bounded_per_round() -> None:
    """Releases are bounded per round."""
    names = servers(100)
    holders = dict.fromkeys(names, "a")
    p = plan("a", names, holders, ["a", "b"])
    assert len(p.release) == RELEASE_LIMIT


def test_a_server_no_longer_configured_is_released() -> None:
    """A server no longer configured is released."""
    names = servers(2)
    holders = {"gone": "a", names[0]: "a"}
    p = plan("a", names, holders, ["a"])
    assert p.release == ("gone",)
    assert p.take == (names[1],)


def test_nodes_prefer_different_free_servers() -> None:
    """Nodes prefer different free servers."""
    names = servers(40)
    first_a = plan("a", names, {}, ["a", "b"]).take[:20]
    first_b = plan("b", names, {}, ["a", "b"]).take[:20]
    # Rendezvous hashing: two nodes filling their shares at once mostly differ.
    assert len(set(first_a) & set(first_b)) < 15


def test_a_node_that_joins_gets_its_share_and_one_that_leaves_gives_it_up() -> None:
    """A node that joins gets its share and one that leaves gives it up."""
    names = servers(20)
    holders: dict[str, str] = {}
    converge(names, holders, ["a", "b"])
    assert sorted(holders.values()).count("a") == 10
    converge(names, holders, ["a", "b", "c"])
    counts = sorted(list(holders.values()).count(n) for n in "abc")
    assert counts == [6, 7, 7]
    converge(names, holders, ["a", "c"])
    assert set(holders.values()) == {"a", "c"}
    assert sorted(list(holders.values()).count(n) for n in "ac") == [10, 10]


NODE_NAMES = st.lists(
    st.sampled_from(["n1", "n2", "n3", "n4", "n5", "n6"]),
    min_size=1,
    max_size=6,
    unique=True,
)


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list[str], dict[str, str], list[str]]:
    """A fleet, who holds what (live, dead or left nodes), and the live nodes."""
    names = servers(draw(st.integers(min_value=0, max_value=60)))
    live = draw(NODE_NAMES)
    owners = st.sampled_from([*live, "dead-1", "dead-2", ""])
    holders = {}
    for name in [*names, "removed-1", "removed-2"]:
        owner = draw(owners)
        if owner:
            holders[name] = owner
    order = draw(st.permutations(live))
    return names, holders, list(order)


@settings(max_examples=200, deadline=None)
@given(clusters())
def test_every_server_ends_held_once_and_shares_differ_by_at_most_one(
    cluster: tuple[list[str], dict[str, str], list[str]],
) -> None:
    """Over any nodes and leases, applying plans in turn reaches an even split."""
    names, holders, live = cluster
    rounds = converge(names, holders, live)
    # Each round moves up to RELEASE_LIMIT servers per node: a bounded number.
    assert rounds <= 2 + math.ceil(len(names) / RELEASE_LIMIT) + 1
    held = {s: n for s, n in holders.items() if s in names}
    assert set(held) == set(names), "every configured server is held"
    assert set(held.values()) <= set(live), "only by live nodes"
    assert not {s for s, n in holders.items() if s not in names and n in live}
    counts = [list(held.values()).count(n) for n in live]
    assert max(counts) - min(counts) <= 1
    assert sum(counts) == len(names)


@settings(max_examples=200, deadline=None)
@given(clusters(), st.data())
def test_busy_servers_stay_unless_far_above_share(
    cluster: tuple[list[str], dict[str, str], list[str]], data: st.DataObject
) -> None:
    """Running restores do not move below the slack; every server still held once."""
    names, holders, live = cluster
    busy = data.draw(st.sets(st.sampled_from(names))) if names else set()
    before = dict(holders)
    converge(names, holders, live, busy=busy)
    held = {s: n for s, n in holders.items() if s in names}
    assert set(held) == set(names)
    assert set(held.values()) <= set(live)
    for node in live:
        share = fair_share(node, live, len(names))
        mine = [s for s, n in held.items() if n == node]
        assert len(mine) <= share + 1
    # A busy server held by a live node moved only if its node was above share+1.
    for server in busy:
        owner = before.get(server)
        if owner in live and holders.get(server) != owner:
            share = fair_share(owner, live, len(names))
            had = sum(1 for s in names if before.get(s) == owner)
            assert had > share + 1
