from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guard.followups import (
    FALLBACK,
    MAX_MESSAGE_CHARS,
    TEMPLATE_DIR,
    MessageContext,
    Messages,
    TemplateError,
    case_ref,
    template_problems,
)
from guard.issues import read_issue
from guard.issues.text import detect_locale
from guard.policies import TEMPLATE_KEYS

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
    override = {"followup.en": "Noted the {{ issue or 'request' }} ({{ case_ref }})."}
    assert MESSAGES.follow_up(ctx("en", "stain"), override) == "Noted the stain (RG-1A2B3C4D)."
    assert MESSAGES.follow_up(ctx("en", None), override) == "Noted the request (RG-1A2B3C4D)."


def test_templates_are_sandboxed() -> None:
    with pytest.raises(TemplateError):
        MESSAGES.check("{{ ''.__class__.__mro__[1].__subclasses__() }}", ctx("en", None))


def test_a_broken_override_falls_back_to_the_default() -> None:
    text = MESSAGES.follow_up(ctx("en", "stain"), {"followup.en": "{{ nope.nothing }}"})
    assert text.startswith("We have logged the stain")


def test_template_problems_lists_templates_that_do_not_render() -> None:
    problems = template_problems(
        {"followup.en": "{% if %}", "followup.zh": "好的 {{ issue or '' }}，谢谢", "holding.review.en": "OK"},
        MESSAGES,
    )
    assert len(problems) == 2 and "followup.en" in problems[0] and "followup.zh" in problems[1]


BAD_TEMPLATES = [
    ("{{ range(100001)|length }}", "range"),
    ("{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}ok", "ranges"),
    ("{% for i in range(10000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}ok", "range"),
    ("{% for i in range(1000) %}{% for j in range(10) %}{{ i*j }}{% endfor %}{% endfor %}", "longer than"),
    ("{% for i in range(1000) %}xxxxxxxxxx{% endfor %}", "longer than"),
    ("{{ 'x'*1000000 }}", "sequence longer"),
    ("{{ 'x'*10**12 }}", "longer than 500"),
    ("{{ 9**9**9 }}", "limited"),
    ("{{ (range(500)|join(','))*(range(500)|join(',')) }}", "multiply"),
    ("{{ '%999999999d' % 1 }}", "formatting"),
    ("{{ 'x'|center(1000000000) }}", "center"),
    ("{{ 'x'.center(1000000000) }}", "not safely callable"),
    ("{{ 'x'.format(1) }}", "not safely callable"),
    ("{{ lipsum(100000) }}", "not safely callable"),
    ("{% macro f(n) %}{{ f(n) }}{{ f(n) }}{% endmacro %}{{ f(1) }}", "render"),
    ("{% for a in [1] %}{% for b in [1] %}{% for c in [1] %}x{% endfor %}{% endfor %}{% endfor %}", "nested"),
    ("{% for c in '" + "x" * 200 + "' %}{% endfor %}ok", "literal"),
    ("{{ [" + ",".join(["1"] * 101) + "]|length }}", "literal list"),
    ("{{ ''.__class__.__mro__ }}", "render"),
    ("We have logged the {{ issue }}.", "'None'"),
    ("We have logged the {{ issue|string }}.", "'None'"),
    ("已为您登记{{ issue or '' }}问题", "gap"),
    ("We have logged the {{ issue or '' }}; thanks ({{ case_ref }}).", "gap"),
    ("{% if issue %}{{ issue }}{% endif %}", "empty"),
    ("<b>{{ issue or 'your issue' }}</b>", "markup"),
    ("{{ '{{' }} {{ issue or 'x' }}", "markup"),
    ("x" * 4001, "longer than 4000"),
]


@pytest.mark.parametrize(
    ("source", "reason"), BAD_TEMPLATES, ids=lambda v: v[:40] if isinstance(v, str) else v
)
def test_templates_that_must_not_publish(source: str, reason: str) -> None:
    t = time.perf_counter()
    problems = template_problems({"followup.en": source}, MESSAGES)
    assert time.perf_counter() - t < 1.0
    assert len(problems) == 1 and reason in problems[0], problems


@pytest.mark.parametrize(
    ("source", "reason"), BAD_TEMPLATES, ids=lambda v: v[:40] if isinstance(v, str) else v
)
def test_at_run_time_a_bad_override_gives_the_default_quickly(source: str, reason: str) -> None:
    for issue in ("stain", None):
        t = time.perf_counter()
        text = MESSAGES.follow_up(ctx("en", issue), {"followup.en": source})
        assert time.perf_counter() - t < 0.5
        default = MESSAGES.follow_up(ctx("en", issue), {})
        assert text == default


def test_a_broken_default_gives_the_fixed_sentence(tmp_path: Path) -> None:
    (tmp_path / "followup.en.j2").write_text("{{ range(100001)|length }}", encoding="utf-8")
    text = Messages(tmp_path).follow_up(ctx("en", "stain"), {})
    assert text == FALLBACK["followup"]["en"].format(case_ref="RG-1A2B3C4D")
    assert Messages(tmp_path).holding("review", ctx("zh", None), {}).endswith("（工单号 RG-1A2B3C4D）。")


GOOD_TEMPLATES = [
    "We have logged the {{ issue or 'problem' }}; we'll call within {{ response_time }} ({{ case_ref }}).",
    "{% if issue %}Noted: {{ issue|upper }}.{% else %}Noted.{% endif %} Case {{ case_ref }}.",
    "{% for i in range(3) %}-{% endfor %} {{ (issue or 'your request')|title }} {{ '-' * 10 }}",
    "{% macro name(x) %}[{{ x }}]{% endmacro %}{{ name(issue or 'request') }} {{ case_ref.lower() }}",
]


@pytest.mark.parametrize("source", GOOD_TEMPLATES)
def test_reasonable_templates_publish(source: str) -> None:
    assert template_problems({"followup.en": source, "followup.zh": source}, MESSAGES) == []


@pytest.mark.parametrize("key", TEMPLATE_KEYS)
def test_every_default_template_passes_its_own_checks(key: str) -> None:
    source = (TEMPLATE_DIR / f"{key}.j2").read_text(encoding="utf-8")
    assert template_problems({key: source}, MESSAGES) == []


@given(st.one_of(st.none(), st.text(min_size=1, max_size=80)), st.sampled_from(TEMPLATE_KEYS))
@settings(max_examples=200, deadline=None)
def test_default_messages_name_the_phrase_or_read_without_one(issue: str | None, key: str) -> None:
    kind, locale = key.rsplit(".", 1)
    c = ctx(locale, issue)
    text = MESSAGES.follow_up(c, {}) if kind == "followup" else MESSAGES.holding(kind.split(".")[1], c, {})  # type: ignore[arg-type]
    assert "RG-1A2B3C4D" in text and len(text) <= MAX_MESSAGE_CHARS
    if issue and issue.strip():
        assert issue.strip() in text
    else:
        assert "None" not in text and "登记问题" not in text and "the ;" not in text and "the  " not in text


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
    assert read_issue(question, None, locale).phrase == expected
