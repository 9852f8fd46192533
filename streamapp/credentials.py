"""Well-known credential formats, found inside any string (SPEC §7, issue 11).

Pure: no I/O. :func:`redact` replaces every credential below with
``[REDACTED]``, whole; ``redact.Redactor`` runs it on every string before its
key and pair rules. Each format is a fixed prefix and a body long enough that
ordinary words never match, and a match never starts or ends inside a longer
run of letters and digits (``task-…`` holds no ``sk-`` key).

=====================  ===========================================================
format                 pattern
=====================  ===========================================================
AWS access key id      ``AKIA``, ``ASIA``, ``ABIA`` or ``ACCA`` + 16 upper-case letters or digits
AWS secret access key  40 characters of base64 (mixed case and a digit, ``/`` or ``+``)
                       *in a string that holds an access key id*; under a key that
                       names it (``aws_secret_access_key``) the key rules catch it anywhere
JWT                    ``eyJ…`` ``.`` ``eyJ…`` ``.`` signature (base64url; the signature may be empty)
OpenAI, Anthropic      ``sk-`` + 20 or more of ``[A-Za-z0-9_-]`` with a digit among them
                       (``sk-proj-…``, ``sk-ant-api03-…``, ``sk-svcacct-…``)
GitHub                 ``ghp_``, ``gho_``, ``ghu_``, ``ghs_``, ``ghr_`` + 30 or more letters or digits;
                       ``github_pat_`` + 22 or more of ``[A-Za-z0-9_]``
Slack                  ``xoxa-``, ``xoxb-``, ``xoxp-``, ``xoxo-``, ``xoxs-``, ``xoxr-``, ``xapp-``
                       + 10 or more of ``[A-Za-z0-9-]``
Stripe                 ``sk_live_``, ``rk_live_``, ``sk_test_``, ``rk_test_`` + 10 or more letters or digits
                       (publishable ``pk_…`` keys are not secret and stay)
Google API key         ``AIza`` + 35 of ``[A-Za-z0-9_-]``
Hugging Face           ``hf_`` + 30 or more letters or digits
GitLab                 ``glpat-`` + 20 or more of ``[A-Za-z0-9_-]``
npm                    ``npm_`` + 36 letters or digits
SendGrid               ``SG.`` + 16 or more ``.`` + 16 or more of ``[A-Za-z0-9_-]``
=====================  ===========================================================
"""

from __future__ import annotations

import re

REDACTED = "[REDACTED]"

# Not after a letter, digit, "_" or "-": "task-…" and "desk_live_…" hold no key.
_BEFORE = r"(?<![A-Za-z0-9_-])"
# Not followed by more of a token: a longer run is something else.
_AFTER = r"(?![A-Za-z0-9_-])"
_FORMATS = re.compile(
    _BEFORE
    + "(?:"
    + "|".join(
        [
            r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}",
            r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
            r"sk-(?=[A-Za-z0-9_-]{20})(?=[A-Za-z_-]*[0-9])[A-Za-z0-9_-]+",
            r"gh[pousr]_[A-Za-z0-9]{30,}",
            r"github_pat_[A-Za-z0-9_]{22,}",
            r"(?:xox[abposr]|xapp)-[A-Za-z0-9-]{10,}",
            r"[sr]k_(?:live|test)_[A-Za-z0-9]{10,}",
            r"AIza[A-Za-z0-9_-]{35}",
            r"hf_[A-Za-z0-9]{30,}",
            r"glpat-[A-Za-z0-9_-]{20,}",
            r"npm_[A-Za-z0-9]{36}",
            r"SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}",
        ]
    )
    + ")"
    + _AFTER
)
_AWS_KEY_ID = re.compile(_BEFORE + r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}" + _AFTER)
# Random base64 has both cases and a digit (or / +); a git hash (lower-case hex) has not.
_AWS_SECRET = re.compile(
    r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]*[A-Z])(?=[A-Za-z0-9/+]*[a-z])(?=[A-Za-z0-9/+]*[0-9/+])"
    r"[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
)
#: No format is shorter: shorter strings are never scanned.
SHORTEST = 15


def redact(text: str) -> str:
    """Return ``text`` with every well-known credential replaced by ``[REDACTED]``."""
    if len(text) < SHORTEST:
        return text
    if _AWS_KEY_ID.search(text) is not None:
        # The secret that goes with an access key id sits beside it (a CSV row, `aws configure`).
        text = _AWS_SECRET.sub(REDACTED, text)
    return _FORMATS.sub(REDACTED, text)
