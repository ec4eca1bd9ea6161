from watcher.phases import RESTORE_PHASES, Phase, phases_between


def test_phases_between_infers_missing_phases_in_order() -> None:
    """Phases strictly between two observed ones come back in order."""
    assert phases_between(Phase.CREATE_TEMP_DIR, Phase.RESTORE_DATABASES) == (
        Phase.RESTORE_CONFIG_FILES,
        Phase.RESTORE_KEYSTORES,
    )


def test_phases_between_from_idle_starts_at_initialize() -> None:
    """IDLE counts as before INITIALIZE."""
    assert phases_between(Phase.IDLE, Phase.RESTORE_CONFIG_FILES) == (
        Phase.INITIALIZE,
        Phase.CREATE_TEMP_DIR,
    )


def test_phases_between_adjacent_or_backwards_is_empty() -> None:
    """Nothing is missing between neighbours, and nothing is inferred backwards."""
    assert phases_between(Phase.INITIALIZE, Phase.CREATE_TEMP_DIR) == ()
    assert phases_between(Phase.CLEANUP, Phase.INITIALIZE) == ()
    assert phases_between(Phase.CLEANUP, Phase.CLEANUP) == ()


def test_wire_lookups_reject_unknown_values() -> None:
    """Unknown status names and codes map to None, not an exception."""
    assert Phase.from_status("RESTORE_KEYSTORES") is Phase.RESTORE_KEYSTORES
    assert Phase.from_status("FAILED") is None
    assert Phase.from_code(7) is Phase.COMPLETED
    assert Phase.from_code(8) is None
    assert Phase.from_code(-1) is None


def test_active_and_terminal() -> None:
    """Only phases 1..6 are active; COMPLETED is the only terminal phase."""
    assert [p for p in Phase if p.is_active] == list(RESTORE_PHASES[:-1])
    assert [p for p in Phase if p.is_terminal] == [Phase.COMPLETED]
