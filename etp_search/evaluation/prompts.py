"""Class prompt sets for zero-shot labelling: built-in sets and user prompt files.

Prompt sets (``class_prompts(task, prompt_set)``):

- ``"default"``: one prompt per class, the class description (SCP-ECG statement wording from
  scp_statements.csv, via ``Task.description``).
- ``"ensemble"``: the description plus the phrasings written for this project in
  ``etp_search/prompts/<task>.json`` (superdiagnostic, subdiagnostic, rhythm, form, cpsc2018);
  a class that file does not list, or a task without a file (diagnostic, all), gets the
  description put through :data:`DEFAULT_TEMPLATES`. Prompt embeddings are averaged (ensembling).
- a path to a prompt file (format below).

Prompt file format (JSON, UTF-8)::

    {
      "task": "rhythm",                              # optional, informational
      "templates": ["{}", "a tracing of {}"],        # optional: wrap every phrase (see below)
      "classes": {                                   # required: class -> phrase(s)
        "AFIB": ["atrial fibrillation", "irregularly irregular rhythm"],
        "SR": "sinus rhythm"                         # a single string is one phrase
      }
    }

Templates (CLIP-style prompt templates): each must hold the placeholder ``{}`` or ``{description}``
(the same thing), which is replaced by a phrase; a class's prompts are every template applied to
every one of its phrases (above: "atrial fibrillation", "a tracing of atrial fibrillation", ...).
Add ``"{}"`` as a template to keep the bare phrase too. Without ``templates`` the phrases are the
prompts, as written. With the shipped checkpoint (trained on SCP-ECG statement lists) templates
cost AUC, "ECG showing {}" most (it pulls every class toward "normal ECG"): see
benchmarks/results/prompt_templates.md.

With a task, class names must be the task's classes; a class left out gets its description (put
through the file's templates, when it has any). Without a task (a store of any dataset), the class names are matched against the
label keys stored with each record (e.g. PTB-XL SCP codes such as "AFIB"), which gives each
class its ground truth. Every problem in a file is reported as one line naming the file.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from etp_search.errors import DataError
from etp_search.labels import Task, get_task

logger = logging.getLogger(__name__)

#: Folder of the prompt sets shipped with the package.
PROMPT_DIR = Path(__file__).resolve().parents[1] / "prompts"
#: Phrasings applied to a class description when no hand-written prompts exist for it.
DEFAULT_TEMPLATES = ("{description}", "ECG showing {description}", "an electrocardiogram with {description}")
#: Names of the built-in prompt sets (anything else is read as a file path).
BUILTIN_SETS = ("default", "ensemble")


#: A template's placeholder for the phrase: ``{}`` (as in the README) or ``{description}``.
_PLACEHOLDER = re.compile(r"\{(?:description)?\}")


@dataclass
class PromptFile:
    """A parsed prompt file.

    Attributes:
        classes: Class -> prompts, the file's templates already applied (what gets encoded).
        templates: The file's templates, or None when it has none.
        task: The file's informational task name.
        source: Where it came from, for messages.
        phrases: Class -> phrases as written in the file (before templates).
    """

    classes: dict[str, list[str]]
    templates: tuple[str, ...] | None = None
    task: str | None = None
    source: str = ""
    phrases: dict[str, list[str]] = field(default_factory=dict)

    def prompts_for(self, phrase: str) -> list[str]:
        """One phrase (e.g. a class description) through the file's templates; itself without templates."""
        return apply_templates(phrase, self.templates) if self.templates else [phrase]


def apply_templates(phrase: str, templates: tuple[str, ...] | list[str]) -> list[str]:
    """Each template with its ``{}``/``{description}`` placeholder replaced by ``phrase`` (duplicates dropped)."""
    # A function replacement, so braces or backslashes inside the phrase are never re-interpreted.
    return _dedup([_PLACEHOLDER.sub(lambda _: phrase, t) for t in templates])


def _prompt_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: each class needs a prompt string or a non-empty list of strings")
    out = []
    for p in value:
        if not isinstance(p, str) or not p.strip():
            raise DataError(f"{where}: prompts must be non-empty strings, got {p!r}")
        out.append(p.strip())
    return out


def parse_prompt_data(data: Any, source: str = "prompt file") -> PromptFile:
    """Validate already-loaded prompt JSON (see the module docstring for the format)."""
    if not isinstance(data, dict):
        raise DataError(f'{source}: expected a JSON object like {{"classes": {{"AFIB": ["atrial fibrillation"]}}}}')
    unknown = set(data) - {"task", "templates", "classes", "note"}
    if unknown:
        raise DataError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}; allowed: task, templates, classes, note")
    classes = data.get("classes")
    if not isinstance(classes, dict) or not classes:
        raise DataError(f'{source}: needs a non-empty "classes" object mapping class -> prompt(s)')
    parsed = {str(c): _prompt_list(v, f"{source}: class {c!r}") for c, v in classes.items()}
    templates = data.get("templates")
    if templates is not None and (
            not isinstance(templates, list) or not templates
            or not all(isinstance(t, str) and t.strip() and _PLACEHOLDER.search(t) for t in templates)):
        raise DataError(f'{source}: "templates" must be a non-empty list of strings that each contain {{}} or '
                        f'{{description}} (the class phrase), e.g. ["ECG showing {{}}"]')
    task = data.get("task")
    if task is not None and not isinstance(task, str):
        raise DataError(f'{source}: "task" must be a task name string')
    fixed = tuple(t.strip() for t in templates) if templates is not None else None
    prompts = {c: _dedup([q for p in ps for q in apply_templates(p, fixed)]) if fixed else ps
               for c, ps in parsed.items()}
    return PromptFile(prompts, fixed, task, source, parsed)


def load_prompt_file(path: str | Path) -> PromptFile:
    """Read and validate a prompt file; any problem is one DataError line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompt file {path} not found; pass default, ensemble or a JSON file of class prompts")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"prompt file {path} is not valid JSON ({exc.__class__.__name__}: line "
                        f"{getattr(exc, 'lineno', '?')}); see etp_search/prompts/*.json for examples") from None
    return parse_prompt_data(data, source=f"prompt file {path}")


def _dedup(prompts: list[str]) -> list[str]:
    return list(dict.fromkeys(prompts))


def class_prompts(task: Task | str, prompt_set: str | Path = "default") -> dict[str, list[str]]:
    """Prompts per class of ``task`` (a Task or its name) for a built-in set name or a prompt file path.

    Raises:
        DataError: for a missing/invalid file or class names that are not the task's.
        EtpError: for an unknown task name.
    """
    if isinstance(task, str):
        task = get_task(task)
    if str(prompt_set) == "default":
        return {c: [task.description[c]] for c in task.classes}
    if str(prompt_set) == "ensemble":
        shipped = PROMPT_DIR / f"{task.name}.json"
        pf = load_prompt_file(shipped) if shipped.is_file() else PromptFile({})
        templates = pf.templates or DEFAULT_TEMPLATES
        return {
            c: _dedup([task.description[c], *pf.classes[c]]) if c in pf.classes
            else apply_templates(task.description[c], templates)
            for c in task.classes
        }
    pf = load_prompt_file(prompt_set)
    unknown = [c for c in pf.classes if c not in task.classes]
    if unknown:
        raise DataError(f"{pf.source}: class(es) {', '.join(unknown)} are not in task '{task.name}' "
                        f"(its classes: {', '.join(task.classes)})")
    missing = [c for c in task.classes if c not in pf.classes]
    if missing:
        logger.info("%s lists no prompts for %s; using their descriptions", pf.source, ", ".join(missing))
    return {c: pf.classes[c] if c in pf.classes else pf.prompts_for(task.description[c]) for c in task.classes}


def free_label_prompts(labels: str | list[str]) -> dict[str, list[str]]:
    """Classes from free text (``"atrial fibrillation,sinus rhythm"``): each label is its own prompt."""
    items = labels.split(",") if isinstance(labels, str) else list(labels)
    items = [s.strip() for s in items if s and s.strip()]
    if not items:
        raise DataError('--labels needs at least one label, e.g. --labels "atrial fibrillation,sinus rhythm"')
    return {s: [s] for s in _dedup(items)}


def match_label_keys(
    classes: list[str], label_keys: set[str], descriptions: Mapping[str, str | list[str]] | None = None
) -> dict[str, str | None]:
    """Which stored label key gives each free class its ground truth (None: no match).

    A class matches a key equal to it (case-insensitive), or a key one of whose descriptions
    (e.g. an SCP statement's) equals the class text — so "atrial fibrillation" finds "AFIB".
    """
    by_lower = {k.lower(): k for k in label_keys}
    by_desc: dict[str, str] = {}
    for key, descs in (descriptions or {}).items():
        if key in label_keys:
            for desc in [descs] if isinstance(descs, str) else descs:
                by_desc.setdefault(str(desc).strip().lower(), key)
    return {c: by_lower.get(c.lower()) or by_desc.get(c.strip().lower()) for c in classes}
