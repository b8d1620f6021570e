"""The one error tree, handed out once at the boundary (:func:`backfill.errors.flatten`)."""

from __future__ import annotations

import anyio
import pytest

from backfill.errors import BackfillError, ExitCode, OutputError, RemoteError, UsageError, flatten
from backfill.library import _boundary

pytestmark = pytest.mark.anyio


def test_a_group_of_our_errors_is_its_first_one_of_ours() -> None:
    disk = OutputError("disk full while writing in data")
    group = BaseExceptionGroup("run", [BaseExceptionGroup("keys", [disk]),
                                       RemoteError("export API: HTTP 503")])
    assert flatten(group) is disk


def test_a_group_that_holds_a_bug_is_handed_out_whole() -> None:
    bug = TypeError("unsupported operand")
    group = BaseExceptionGroup("run", [OutputError("disk full"), bug])
    assert flatten(group) is group  # raised with its traceback, not passed off as ours


async def test_the_library_hands_out_one_line_errors_and_whole_bugs() -> None:
    @_boundary
    async def two_tasks(second: BaseException) -> None:
        async def fail(error: BaseException) -> None:
            raise error

        async with anyio.create_task_group() as group:
            group.start_soon(fail, UsageError("--from 2026-13-01 is not a date"))
            group.start_soon(fail, second)

    with pytest.raises(UsageError) as caught:
        await two_tasks(OutputError("disk full"))
    assert caught.value.exit_code == ExitCode.USAGE
    with pytest.raises(BaseExceptionGroup) as whole:
        await two_tasks(KeyError("a bug"))
    assert any(isinstance(e, KeyError) for e in whole.value.exceptions)
    assert isinstance(flatten(UsageError("x")), BackfillError)
