"""Block Kit helpers: a message cut to Slack's block limit keeps its buttons."""

from __future__ import annotations

from bot.blocks import MESSAGE_BLOCKS_MAX, button, cap_blocks, sections
from tests.fakes.slack import check_message


def _controls(block_id: str) -> dict[str, object]:
    return {"type": "actions", "block_id": block_id, "elements": [button("Go", block_id, "v")]}


def test_a_cut_message_keeps_its_actions_and_cuts_the_content_before_them() -> None:
    content = sections("\n\n".join(f"Paragraph {i}. " + "x" * 2_900 for i in range(80)))
    blocks = cap_blocks([*content, _controls("first"), *content[:3], _controls("last")])

    assert len(blocks) == MESSAGE_BLOCKS_MAX
    check_message({"text": "t", "blocks": blocks})  # what Slack would refuse, it raises
    assert [b["block_id"] for b in blocks if b["type"] == "actions"] == ["first", "last"]
    assert blocks[-1]["block_id"] == "last", "the buttons stay after the content"
    notice = next(b for b in blocks if b["type"] == "context")
    hidden = len(content) + 3 - (MESSAGE_BLOCKS_MAX - 3)
    assert notice["elements"][0]["text"] == f"_{hidden} more blocks not shown (Slack's limit)._"
    assert blocks.index(notice) == MESSAGE_BLOCKS_MAX - 3, "the line sits where the cut was"


def test_a_message_within_the_limit_is_left_alone() -> None:
    blocks = [*sections("short"), _controls("only")]
    assert cap_blocks(blocks) is blocks


def test_a_message_without_actions_is_cut_at_the_end() -> None:
    content = sections("\n\n".join("y" * 2_990 for _ in range(60)))
    blocks = cap_blocks(content)
    assert blocks[:-1] == content[: MESSAGE_BLOCKS_MAX - 1]
    assert "11 more blocks not shown" in blocks[-1]["elements"][0]["text"]
