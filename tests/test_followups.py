from __future__ import annotations

import pytest

from guard.followups import MessageContext, Messages, TemplateError, case_ref, template_problems
from guard.issue_phrase import detect_locale, issue_phrase

MESSAGES = Messages()


def ctx(locale: str, issue: str | None) -> MessageContext:
    return MessageContext(locale, issue, "RG-1A2B3C4D", "2小时" if locale == "zh" else "2 hours")


def test_zh_follow_up_names_the_issue_and_the_next_step() -> None:
    text = MESSAGES.follow_up(ctx("zh", "口袋开线"), {})
    assert text == "已为您登记口袋开线问题，专员将在2小时内联系您（工单号 RG-1A2B3C4D）。"


def test_en_follow_up_names_the_issue_and_the_next_step() -> None:
    text = MESSAGES.follow_up(ctx("en", "open seam on your pocket"), {})
    assert text == (
        "We have logged the open seam on your pocket; "
        "a specialist will contact you within 2 hours (case RG-1A2B3C4D)."
    )


@pytest.mark.parametrize("locale", ["zh", "en"])
def test_follow_up_reads_naturally_without_an_issue(locale: str) -> None:
    text = MESSAGES.follow_up(ctx(locale, None), {})
    assert "None" not in text
    assert "RG-1A2B3C4D" in text
    assert ("这个问题" in text) if locale == "zh" else ("your issue" in text)


@pytest.mark.parametrize(
    ("action", "locale"), [(a, lc) for a in ("escalate", "review") for lc in ("zh", "en")]
)
def test_holding_messages_exist_for_each_queued_action(action: str, locale: str) -> None:
    with_issue = MESSAGES.holding(action, ctx(locale, "箱角破洞" if locale == "zh" else "damaged parcel"), {})  # type: ignore[arg-type]
    without = MESSAGES.holding(action, ctx(locale, None), {})  # type: ignore[arg-type]
    assert "RG-1A2B3C4D" in with_issue and "RG-1A2B3C4D" in without
    assert ("箱角破洞" in with_issue) if locale == "zh" else ("damaged parcel" in with_issue)


def test_policy_override_replaces_the_default_template() -> None:
    text = MESSAGES.follow_up(ctx("en", "stain"), {"followup.en": "Noted the {{ issue }} ({{ case_ref }})."})
    assert text == "Noted the stain (RG-1A2B3C4D)."


def test_templates_are_sandboxed() -> None:
    with pytest.raises(TemplateError):
        MESSAGES.check("{{ ''.__class__.__mro__[1].__subclasses__() }}", ctx("en", None))


def test_a_broken_override_falls_back_to_the_default() -> None:
    text = MESSAGES.follow_up(ctx("en", "stain"), {"followup.en": "{{ nope.nothing }}"})
    assert text.startswith("We have logged the stain")


def test_template_problems_lists_templates_that_do_not_render() -> None:
    problems = template_problems({"followup.en": "{% if %}", "followup.zh": "好的 {{ issue }}"}, MESSAGES)
    assert len(problems) == 1 and "followup.en" in problems[0]


def test_user_text_is_not_evaluated_as_a_template() -> None:
    text = MESSAGES.follow_up(ctx("en", "{{ 7*7 }}"), {})
    assert "{{ 7*7 }}" in text and "49" not in text


def test_case_ref() -> None:
    assert case_ref("0123456789abcdef") == "RG-01234567"


@pytest.mark.parametrize(
    ("text", "requested", "expected"),
    [
        ("口袋开线怎么办？", None, "zh"),
        ("The pocket seam came open", None, "en"),
        ("我的order 58213 被扣了两次", None, "zh"),
        ("", None, "en"),
        ("口袋开线怎么办？", "en-GB", "en"),
        ("The seam", "zh_CN", "zh"),
        ("The seam", "fr", "en"),
    ],
)
def test_detect_locale(text: str, requested: str | None, expected: str) -> None:
    assert detect_locale(text, requested) == expected


@pytest.mark.parametrize(
    ("question", "locale", "expected"),
    [
        ("新买的牛仔裤，右边口袋开线了，才穿了一次", "zh", "右边口袋开线"),
        ("口袋开线怎么办？", "zh", "口袋开线"),
        ("外套拉链拉不上，拉到一半就卡住", "zh", "外套拉链拉不上"),
        ("三个箱子都写了易碎，到我手里全压变形了", "zh", "全压变形"),
        ("这个怎么办？", "zh", None),
        ("你们看下这个订单，钱是不是扣错了", "zh", "扣款金额有误"),
        (
            "The button on my jeans popped off the first time I wore them.",
            "en",
            "loose button on your jeans",
        ),
        (
            "There's a bleach spot on the front of the navy hoodie I just received.",
            "en",
            "bleach spot on your navy hoodie",
        ),
        ("Why was I charged twice?", "en", "duplicate charge"),
        ("The box was empty. Not a single thing inside.", "en", "empty box"),
        ("Look at this, what now?", "en", None),
        ("", "en", None),
    ],
)
def test_issue_phrase(question: str, locale: str, expected: str | None) -> None:
    assert issue_phrase(question, locale) == expected
