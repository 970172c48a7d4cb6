"""Pure feature functions for the bundled scorer.

Everything here is deterministic and model-free: lexical cues (remedy / generic
after-sales / apology lexicons in Chinese and English), grader-directed prompt
injection, keyword stuffing, and the combination of embedding similarities into
one feature vector. The embedding model itself lives in ``guard.scoring.bundled``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from guard.scoring.kinds import KIND_FEATURES, KIND_MATCH

FEATURES_VERSION = "f4"
"""Bump whenever a feature's definition changes (stored in, and checked against, the calibration JSON)."""

FloatArray = NDArray[np.float32] | NDArray[np.float64]

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_CJK_RUN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")
_EN_WORD = re.compile(r"[a-z0-9][a-z0-9'$.]*[a-z0-9]|[a-z0-9]")
_DIGITS = re.compile(r"\d")

# --- prompt injection (text addressed to the grader, not to the customer) -------------------------

_INJECTION_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (
        r"\b(ignore|disregard|forget)\b.{0,30}\b(previous|prior|above|earlier|all|any)\b.{0,20}"
        r"\b(instructions?|prompts?|rules?|guidelines?)",
        r"\bnote to (the )?(reviewer|grader|evaluator|judge|scorer|rater|model|ai|assistant)",
        r"\b(reviewer|grader|evaluator|judge|scorer|rater)s?\s*[:：]",
        r"\b(relevance|quality|final|overall)?\s*score\s*(is|=|:|of|to)?\s*[:：]?\s*(1(\.0+)?|10|100|5/5|10/10)\b",
        r"\b(rate|score|grade|mark)\b.{0,25}\b(this|the)\b.{0,10}\b(reply|response|answer)\b",
        r"\b(fully|completely) (resolves|addresses|answers)\b.{0,40}\b(issue|question|problem)\b.{0,60}"
        r"\b(score|rating|relevan)",
        r"\bsystem (prompt|message|note|instruction)",
        r"\[\s*(system|instruction|admin|developer)\b",
        r"\byou are (now )?(an? )?(ai|language model|grader|evaluator|judge)\b",
        r"\bas an ai\b",
        r"系统提示|系统指令|系统消息|提示词",
        r"(忽略|无视|忘记).{0,8}(之前|以上|前面|上面|所有|全部).{0,6}(指令|指示|说明|提示|规则|要求)",
        r"(评分|打分|评为|给分|分数|得分)",
        r"(审核员|评审|评估员|评委|审核人员|打分员|裁判)",
        r"(满分|高分)",
    )
)
_BRACKETED = re.compile(r"\[[^\]]*\]|【[^】]*】|\([^)]*\)|（[^）]*）|<[^>]*>|\{[^}]*\}")
_SENTENCE = re.compile(r"[^.!?。！？\n]+[.!?。！？\n]*")


def has_injection(text: str) -> bool:
    """True when the text contains wording addressed to a grader/model rather than the customer."""
    return any(p.search(text) for p in _INJECTION_PATTERNS)


def strip_injection(text: str) -> str:
    """Remove bracketed segments and sentences that carry injection markers; keep the rest."""
    out = _BRACKETED.sub(lambda m: "" if has_injection(m.group(0)) else m.group(0), text)
    kept = [s for s in _SENTENCE.findall(out) if not has_injection(s)]
    return "".join(kept).strip()


# --- language and tokens ------------------------------------------------------------------------


def detect_lang(text: str) -> str:
    """ "zh" when the text contains CJK characters, else "en"."""
    return "zh" if _CJK.search(text) else "en"


_EN_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "if",
        "of",
        "to",
        "in",
        "on",
        "at",
        "for",
        "from",
        "by",
        "with",
        "about",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "am",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "there",
        "here",
        "i",
        "me",
        "my",
        "we",
        "our",
        "us",
        "you",
        "your",
        "yours",
        "he",
        "she",
        "they",
        "them",
        "their",
        "his",
        "her",
        "do",
        "does",
        "did",
        "done",
        "have",
        "has",
        "had",
        "having",
        "not",
        "no",
        "yes",
        "so",
        "very",
        "too",
        "just",
        "can",
        "could",
        "would",
        "should",
        "will",
        "shall",
        "may",
        "might",
        "must",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "when",
        "where",
        "why",
        "how",
        "all",
        "any",
        "some",
        "each",
        "every",
        "more",
        "most",
        "other",
        "such",
        "only",
        "own",
        "same",
        "than",
        "then",
        "once",
        "again",
        "also",
        "up",
        "down",
        "out",
        "off",
        "over",
        "under",
        "into",
        "onto",
        "through",
        "during",
        "before",
        "after",
        "above",
        "below",
        "between",
        "both",
        "few",
        "nor",
        "now",
        "get",
        "got",
        "one",
        "two",
        "please",
        "thank",
        "thanks",
        "hi",
        "hello",
        "dear",
        "sorry",
    ]
)
_ZH_STOP_BIGRAMS = frozenset(
    [
        "您好",
        "你好",
        "亲亲",
        "我们",
        "你们",
        "您的",
        "你的",
        "我的",
        "一下",
        "一个",
        "这个",
        "那个",
        "什么",
        "怎么",
        "可以",
        "如果",
        "因为",
        "所以",
        "但是",
        "还是",
        "就是",
        "不是",
        "没有",
        "已经",
        "非常",
        "抱歉",
        "不便",
        "带来",
        "给您",
        "给你",
        "麻烦",
        "谢谢",
        "感谢",
        "请您",
        "这边",
        "那边",
        "的话",
        "时候",
        "一直",
        "现在",
        "今天",
        "还没",
        "了吗",
        "是不",
        "是的",
        "好的",
        "的是",
        "了一",
        "是我",
        "我是",
        "我买",
        "的东",
        "东西",
        "都没",
        "也没",
        "吗？",
    ]
)


def _en_stem(word: str) -> str:
    for suf in ("ing", "ed", "es", "s", "e"):
        if len(word) > len(suf) + 3 and word.endswith(suf):
            return word[: -len(suf)]
    return word


def content_tokens(text: str) -> set[str]:
    """Content-bearing tokens: stemmed English words (no stop words) and Chinese character bigrams."""
    low = text.lower()
    toks: set[str] = set()
    for w in _EN_WORD.findall(low):
        if len(w) >= 3 and w not in _EN_STOP:
            toks.add(_en_stem(w))
        elif w.isdigit() or any(c.isdigit() for c in w):
            toks.add(w)
    for run in _CJK_RUN.findall(text):
        if len(run) == 1:
            continue
        for i in range(len(run) - 1):
            bg = run[i : i + 2]
            if bg not in _ZH_STOP_BIGRAMS:
                toks.add(bg)
    return toks


# --- lexicons -------------------------------------------------------------------------------------

_REMEDY_EN = re.compile(
    r"\b(replac\w*|refund\w*|reship\w*|re-ship\w*|resend\w*|re-send\w*|reissu\w*|reimburs\w*|compensat\w*|"
    r"credit\w*|prepaid|return label|shipping label|pick ?up|collect (it|them)|courier|claim|"
    r"send (you )?(a |an |another |the )?(new|replacement|missing|correct|right|second|spare)|"
    r"ship (you )?(a |an |another )?(new|replacement|correct|right)|"
    r"(new|another|correct|right) one|cancel\w*|revers\w*|void\w*|waiv\w*|expedit\w*|escalat\w*|"
    r"investigat\w*|trace|restart\w*|reset\w*|reinstall\w*|update the app|clear (the |your )?(cache|cookies)|"
    r"unlock\w*|reactivat\w*|repair\w*|technician|fix\w*|price adjustment|difference|keep (it|the)|"
    r"no need to return|free of charge|at no (extra )?cost|on us)\b",
    re.IGNORECASE,
)
_COMMIT_EN = re.compile(
    r"\b(i'll|i will|i've|i have|we'll|we will|we've|we have|i'm|we're|i am|we are|let me|i can|we can)\b"
    r".{0,40}\b(send|ship|refund|replac|arrang|issu|process|credit|cancel|file|contact|schedul|book|"
    r"revers|fix|reset|unlock|expedit|escalat|check|trac|look|open|rais|add|appl|waiv|email)",
    re.IGNORECASE,
)
_TIME_EN = re.compile(
    r"\b(today|tomorrow|right away|immediately|within \d+|in \d+ (hours?|days?|business days?)|"
    r"\d+\s*(-|to)\s*\d+ (business )?days|by (monday|tuesday|wednesday|thursday|friday|saturday|sunday))\b",
    re.IGNORECASE,
)
_GENERIC_EN = re.compile(
    r"\b(you can|you may|please (contact|reach|go to|visit|initiate|request|submit|check|refer|try again|"
    r"be patient|allow)|within \d+ days of (purchase|delivery|receipt)|return policy|"
    r"our (support |service )?team|"
    r"customer (service|support)|support team|from your (account|orders?)|order (history|details|page)|"
    r"will (be happy to|look into|review)|as soon as possible|can vary|may take|experiencing)\b",
    re.IGNORECASE,
)
_APOLOGY_EN = re.compile(
    r"\b(sorry|apolog\w*|inconvenien\w*|understand\w*|frustrat\w*|regret\w*|trouble)\b", re.IGNORECASE
)
_REMEDY_ZH = re.compile(
    r"补发|补寄|重发|重新发|再发|再寄|寄一|发一|寄新|发新|换新|更换|换一|调换|换货|退款|退还|退给|返还|原路|赔|补偿|"
    r"上门取件|取件|揽收|运费.{0,4}(承担|我们出|我们付)|安排|撤销|取消|解冻|解封|重置|重启|刷新|清除缓存|"
    r"免费|清理缓存|重新登录|升级|维修|返修|检修|寄回|核查|追查|加急|催|报备|理赔|差价|补给|不用退回|不用寄回|留着"
)
_COMMIT_ZH = re.compile(
    r"(我这边|我们这边|我来|我马上|我们马上|我已|我们已|已经给您|已为您|给您(补|退|换|寄|发|安排|申请|处理|登记|联系|加急|核实))"
)
_TIME_ZH = re.compile(r"(今天|明天|马上|立即|立刻|尽快|\d+\s*(小时|天|个工作日)内?|\d+-\d+天)")
_GENERIC_ZH = re.compile(
    r"(申请售后|申请退换|申请退货|申请退款|可以申请|联系客服|联系我们|耐心等待|尽快处理|会核实|核实后|反馈给|"
    r"七天无理由|7天无理由|无理由退换|售后问题|有问题随时|订单页面|订单详情|稍后再|晚点再|请留意)"
)
_APOLOGY_ZH = re.compile(r"(抱歉|不便|不好意思|给您带来|添麻烦|对不起|理解您|让您久等|不好的体验)")


def _count(p: re.Pattern[str], text: str) -> float:
    return float(len(p.findall(text)))


@dataclass(frozen=True, slots=True)
class LexicalFeatures:
    remedy: float
    commit: float
    time: float
    generic: float
    apology: float
    digits: float
    log_len: float
    q_overlap: float
    """Fraction of the question's content tokens that the reply repeats."""
    r_novelty: float
    """Fraction of the reply's content tokens that are not in the question."""
    stuffing: float
    """Keyword-stuffing indicator in [0, 1]: repeats the question, adds little, offers no remedy."""
    list_density: float
    """Separators (commas, 、, dashes) per content token: lists of keywords score high."""


def lexical_features(question: str, reply: str) -> LexicalFeatures:
    """Lexicon and overlap cues for (question text incl. image text, reply)."""
    zh = detect_lang(reply) == "zh"
    remedy = _count(_REMEDY_ZH, reply) if zh else _count(_REMEDY_EN, reply)
    commit = _count(_COMMIT_ZH, reply) if zh else _count(_COMMIT_EN, reply)
    time = _count(_TIME_ZH, reply) if zh else _count(_TIME_EN, reply)
    generic = _count(_GENERIC_ZH, reply) if zh else _count(_GENERIC_EN, reply)
    apology = _count(_APOLOGY_ZH, reply) if zh else _count(_APOLOGY_EN, reply)
    digits = float(len(_DIGITS.findall(reply)))
    n_chars = len(reply) * (2.5 if zh else 1.0)
    q_toks = content_tokens(question)
    r_toks = content_tokens(reply)
    shared = q_toks & r_toks
    q_overlap = len(shared) / len(q_toks) if q_toks else 0.0
    r_novelty = (len(r_toks - q_toks) / len(r_toks)) if r_toks else 0.0
    seps = len(re.findall(r"[,，、;；/—–-]|\band\b", reply))
    list_density = seps / max(len(r_toks), 1)
    no_remedy = remedy == 0 and commit == 0
    stuffing = float(no_remedy) * min(1.0, q_overlap * 2.0) * (1.0 - r_novelty)
    return LexicalFeatures(
        remedy=min(remedy, 4.0),
        commit=min(commit, 3.0),
        time=min(time, 3.0),
        generic=min(generic, 3.0),
        apology=min(apology, 3.0),
        digits=min(digits, 12.0) / 12.0,
        log_len=float(np.log1p(n_chars)),
        q_overlap=q_overlap,
        r_novelty=r_novelty,
        stuffing=stuffing,
        list_density=min(list_density, 2.0),
    )


_STUFFING_PHRASE = re.compile(
    r"(等|这些|各类|各种|所有)(问题|情况).{0,8}(重视|关注|在意)|take (all )?(of )?(these|this|them|it|such) "
    r"(issues |matters |things )?(very )?seriously|value (every|all) (piece of )?feedback",
    re.IGNORECASE,
)
_LIST_SEP = re.compile(r"[,，、;；/]|\band\b|\bor\b")


def list_head(reply: str) -> str:
    """The reply up to its first clause end (where a leading keyword list would be)."""
    zh = detect_lang(reply) == "zh"
    head_end = r"[:：—!！。?？，,;；]" if zh else r"[:：—!！?？]|\.(?!\d)"
    return re.split(head_end, reply, maxsplit=1)[0]


def keyword_list(question: str, reply: str) -> tuple[int, int]:
    """(short list items, items made of the question's keywords) in the reply's leading list.

    Chinese lists are split on the enumeration comma "、" only (the ordinary comma joins clauses).
    """
    q_toks = content_tokens(question)
    zh = detect_lang(reply) == "zh"
    head = list_head(reply)
    segs = head.split("、") if zh else _LIST_SEP.split(head)
    items = 0
    keyword_items = 0
    for seg in segs:
        if not seg.strip():
            continue
        short = len(seg.strip()) <= 8 if zh else len(seg.split()) <= 4
        if not short:
            continue
        items += 1
        seg_toks = content_tokens(seg)
        if seg_toks and len(seg_toks & q_toks) / len(seg_toks) >= 0.5:
            keyword_items += 1
    return items, keyword_items


def is_keyword_stuffing(question: str, reply: str, lex: LexicalFeatures) -> bool:
    """Reply that lists the question's keywords and offers no remedy ("crushed box, fragile, broken...").

    A remedy word that is itself one of the listed keywords ("退款、到账") is not a remedy.
    """
    items, keyword_items = keyword_list(question, reply)
    rest = reply[len(list_head(reply)) :] if keyword_items >= 3 else reply
    rest_lex = lexical_features(question, rest) if rest != reply else lex
    no_remedy = rest_lex.remedy == 0 and rest_lex.commit == 0
    listy = (
        (items >= 3 and keyword_items >= 2)
        or items >= 4
        or (items >= 3 and bool(_STUFFING_PHRASE.search(reply)))
    )
    return no_remedy and listy


_REFUSAL_EN = re.compile(
    r"\b(will not|won't|cannot|can't|can not|unable to|not able to|do not|don't|does not|doesn't|"
    r"are not|aren't|is not|isn't|not)\b.{0,25}\b(repair|replace|refund|return|reship|resend|exchange|"
    r"compensat|cover|accept|eligible|responsible|possible|offer|help|a defect|defective|our fault)\w*|"
    r"\bno (refunds?|returns?|replacements?|exchanges?|compensation)\b|"
    r"\b(is|looks|seems) (normal|expected|fine)\b|"
    r"\bnot a (defect|fault|problem)\b|\b(nothing|not much) (we|i) can do\b|\bdenied\b|\bdeclin\w*",
    re.IGNORECASE,
)
_REFUSAL_ZH = re.compile(
    r"(不能|不可以|无法|不予|不支持|不接受|不负责|不承担|不提供|不会)(给您)?.{0,4}(退|换|修|补|赔|处理|受理)|"
    r"不退不换|概不|恕不|属于正常|正常现象|不是质量问题|不属于质量问题|不算质量问题|没办法|爱莫能助"
)
_CJK_CHAR = re.compile(r"[\u3400-\u9fff]")
_LATIN_CHAR = re.compile(r"[A-Za-z]")


def refusal_count(text: str) -> float:
    """Refusal / denial cues ("we will not refund", "this is normal", "不予退换")."""
    return float(len(_REFUSAL_EN.findall(text)) + len(_REFUSAL_ZH.findall(text)))


def text_lang(text: str) -> str | None:
    """ "zh" or "en" by the share of CJK characters among letters; None for a text without letters."""
    cjk = len(_CJK_CHAR.findall(text))
    latin = len(_LATIN_CHAR.findall(text))
    if cjk == 0 and latin == 0:
        return None
    return "zh" if cjk * 3 >= latin * 0.5 else "en"


# --- embedding-derived features -----------------------------------------------------------------


def _softmax(x: NDArray[np.float64], temp: float) -> NDArray[np.float64]:
    z = (x - x.max()) / temp
    e = np.exp(z)
    return np.asarray(e / e.sum(), dtype=np.float64)


def issue_distribution(
    e: FloatArray, issue_protos: FloatArray, issue_of_proto: Sequence[int], n_issues: int, temp: float
) -> NDArray[np.float64]:
    """Soft assignment of a text to issue categories: max cosine per category, then softmax."""
    sims = np.asarray(issue_protos @ e, dtype=np.float64)
    per = np.full(n_issues, -1.0)
    for s, k in zip(sims, issue_of_proto, strict=True):
        per[k] = max(per[k], s)
    return _softmax(per, temp)


@dataclass(frozen=True, slots=True)
class Prototypes:
    """Unit-norm embeddings of the prototype sentences (from the calibration JSON)."""

    generic: NDArray[np.float32]
    offtopic: NDArray[np.float32]
    issue: NDArray[np.float32]
    issue_of_proto: tuple[int, ...]
    n_issues: int
    temp: float


@dataclass(frozen=True, slots=True)
class ReplyView:
    """What the features see of a reply: its embedded sentences and the size of the whole."""

    sentence_texts: tuple[str, ...]
    """The embedded sentences (see ``CanonicalReply.embedded``)."""
    sentences: NDArray[np.float32]
    """Their unit-norm embeddings (rows; none for an empty reply)."""
    total_chars: int
    """Characters of the whole canonical reply, embedded or not."""


@dataclass(frozen=True, slots=True)
class Core:
    """The part of a reply the model reads: its embedded sentences (the rest is unseen mass)."""

    text: str
    chars: tuple[int, ...]
    emb: NDArray[np.float32]
    cos: NDArray[np.float64]
    """Cosine of each sentence with the question."""
    share: float
    """Characters embedded / characters of the whole canonical reply (0 for an empty reply)."""


def reply_core(view: ReplyView, e_q: FloatArray, lang: str | None) -> Core:
    """The embedded sentences of a reply with their similarity to the question, and their share."""
    if view.sentences.shape[0] == 0:
        return Core("", (), view.sentences, np.zeros(0), 0.0)
    cos = np.asarray(view.sentences @ np.asarray(e_q, dtype=np.float32), dtype=np.float64)
    chars = tuple(len(t) for t in view.sentence_texts)
    return Core(
        text=("" if lang == "zh" else " ").join(view.sentence_texts),
        chars=chars,
        emb=view.sentences,
        cos=cos,
        share=sum(chars) / max(view.total_chars, 1),
    )


RELEVANT_COS = 0.3
"""A sentence at least this close to the question counts as about the customer's issue."""


DENSE_DIM = 512
DENSE_BLOCKS = ("q_x_r", "abs_q_minus_r", "r")

FEATURE_NAMES: tuple[str, ...] = (
    "cos_qr",
    "cos_qr_x_zh",
    "max_sentence_cos",
    "min_sentence_cos",
    "relevant_share",
    "seen_share",
    "log_total_len",
    "max_generic",
    "max_offtopic",
    "max_issue_r",
    "issue_agree",
    "q_issue_conf",
    "agree_x_conf",
    "cos_minus_generic",
    "remedy",
    "commit",
    "time",
    "generic_lex",
    "apology",
    "refusal",
    "refusal_no_remedy",
    "digits",
    "log_len",
    "q_overlap",
    "r_novelty",
    "stuffing",
    "keyword_list",
    "list_density",
    "is_zh",
    "lang_mismatch",
    "remedy_x_cos",
    "cos_minus_issue_r",
    "q_vs_issue_softmax",
    "r_issue_at_q",
    *KIND_FEATURES,
    "refusal_x_kind_match",
)
"""The named features (the last ones from the kind models, ``guard.scoring.kinds``); the model
also reads the dense interaction block."""


def core_embedding(core: Core) -> NDArray[np.float64]:
    """Length-weighted mean of the core's sentence embeddings, unit norm (zeros for an empty core)."""
    if core.emb.shape[0] == 0:
        return np.zeros(DENSE_DIM)
    w = np.asarray(core.chars, dtype=np.float64)
    mean = (w[:, None] * core.emb.astype(np.float64)).sum(axis=0)
    norm = float(np.linalg.norm(mean))
    return np.asarray(mean / norm if norm > 1e-12 else mean, dtype=np.float64)


def dense_features(e_q: FloatArray, e_r: NDArray[np.float64]) -> NDArray[np.float64]:
    """USE interaction block: [q * r elementwise, |q - r|, r] (3 x 512)."""
    q = np.asarray(e_q, dtype=np.float64)
    return np.concatenate([q * e_r, np.abs(q - e_r), e_r])


def feature_vector(
    question: str,
    question_lang: str | None,
    e_q: FloatArray,
    core: Core,
    protos: Prototypes,
    kinds: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Named features of a reply, in FEATURE_NAMES order. ``e_q``: the question's unit embedding;
    ``kinds``: the reply's KIND_FEATURES (``guard.scoring.kinds.kind_features``)."""
    reply = core.text
    e_r = core_embedding(core)
    sent_cos = core.cos if core.cos.size else np.zeros(1)
    cos_qr = float(np.asarray(e_q, dtype=np.float64) @ e_r)
    max_generic = float(np.max(protos.generic @ e_r))
    max_offtopic = float(np.max(protos.offtopic @ e_r))
    max_issue_r = float(np.max(protos.issue @ e_r))
    p_q = issue_distribution(e_q, protos.issue, protos.issue_of_proto, protos.n_issues, protos.temp)
    p_r = issue_distribution(e_r, protos.issue, protos.issue_of_proto, protos.n_issues, protos.temp)
    issue_agree = float(p_q @ p_r)
    issue_sims = np.asarray(protos.issue @ e_r, dtype=np.float64)
    q_vs_issue = float(_softmax(np.concatenate([[cos_qr], issue_sims]), protos.temp)[0])
    q_conf = float(p_q.max())
    lex = lexical_features(question, reply)
    refusal = min(refusal_count(reply), 3.0)
    r_lang = text_lang(reply)
    is_zh = 1.0 if r_lang == "zh" else 0.0
    mismatch = 1.0 if (r_lang is not None and question_lang is not None and r_lang != question_lang) else 0.0
    has_rem = min(lex.remedy + lex.commit, 3.0)
    items, keyword_items = keyword_list(question, reply)
    total = max(sum(core.chars) / core.share, 1.0) if core.share > 0 else 1.0
    return np.array(
        [
            cos_qr,
            cos_qr * is_zh,
            float(sent_cos.max()),
            float(sent_cos.min()),
            float(np.asarray(core.chars, dtype=np.float64)[core.cos >= RELEVANT_COS].sum()) / total,
            core.share,
            float(np.log1p(total * (2.5 if is_zh else 1.0))),
            max_generic,
            max_offtopic,
            max_issue_r,
            issue_agree,
            q_conf,
            issue_agree * q_conf,
            cos_qr - max_generic,
            lex.remedy,
            lex.commit,
            lex.time,
            lex.generic,
            lex.apology,
            refusal,
            refusal * float(has_rem == 0),
            lex.digits,
            lex.log_len,
            lex.q_overlap,
            lex.r_novelty,
            lex.stuffing,
            min(float(keyword_items), 5.0) + 0.2 * min(float(items), 5.0),
            lex.list_density,
            is_zh,
            mismatch,
            has_rem * cos_qr,
            cos_qr - max_issue_r,
            q_vs_issue,
            float(p_r[int(np.argmax(p_q))]),
            *kinds,
            refusal * float(kinds[KIND_MATCH]),
        ],
        dtype=np.float64,
    )


@dataclass(frozen=True, slots=True)
class SentenceHead:
    """P(a sentence is customer-service talk at all) = sigmoid(e . w + b), from its embedding alone.

    Spam, news, recipes or code score low; apologies, remedies and questions about an order high.
    It only decides which sentences of a reply are read as content at all, never their relevance.
    """

    w: NDArray[np.float64]
    b: float

    def proba(self, emb: FloatArray) -> NDArray[np.float64]:
        return sigmoid(np.asarray(emb, dtype=np.float64) @ self.w + self.b)


def mass_factor(core_share: NDArray[np.float64], full_share: float) -> NDArray[np.float64]:
    """1 when at least ``full_share`` of the reply was read and is about the customer, falling
    linearly to 0 below.

    Text the model did not read (beyond the embedded sentences) or judged not customer-service talk
    (spam, news, code: ``SentenceHead``) can only lower a score.
    """
    return np.asarray(np.clip(core_share / max(full_share, 1e-9), 0.0, 1.0), dtype=np.float64)


# --- the calibrated model -------------------------------------------------------------------------

GRADE_TARGETS: tuple[float, float, float] = (0.0, 0.55, 1.0)


def sigmoid(z: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class Head:
    """One logistic head: P = sigmoid(dense . w_dense + ((named - mean) / scale) . w_named + b)."""

    w_dense: NDArray[np.float64]
    w_named: NDArray[np.float64]
    b: float

    def proba(self, dense: NDArray[np.float64], named_z: NDArray[np.float64]) -> NDArray[np.float64]:
        return sigmoid(dense @ self.w_dense + named_z @ self.w_named + self.b)


GENERIC_CEILING = 0.5
"""A reply that is on-topic but not a specific remedy reaches at most this raw score."""


def ordinal_score(p_ge1: NDArray[np.float64], p_2: NDArray[np.float64]) -> NDArray[np.float64]:
    """Raw score: a specific remedy (P(grade = 2)) or, at most half-way, an on-topic reply (P(grade >= 1)).

    ``max(0.5 * P(>=1), P(2))`` keeps each head's ranking where it matters: P(2) orders the top
    (send or not), P(>=1) the bottom (follow up or escalate). Cross-validated it ranks better than
    the expected target 0.55 P(1) + P(2), which mixes the heads' errors.
    """
    return np.asarray(np.maximum(GENERIC_CEILING * p_ge1, p_2), dtype=np.float64)


def piecewise_linear(x: NDArray[np.float64], xs: Sequence[float], ys: Sequence[float]) -> NDArray[np.float64]:
    """Monotone post-calibration map (knots from the calibration JSON)."""
    return np.asarray(np.interp(x, np.asarray(xs), np.asarray(ys)), dtype=np.float64)
