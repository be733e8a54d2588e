"""The README and docs/ say only what exists: every command they show names a real params key, make
target, module, script or console sub-command, and every link lands on a file and heading.

Commands are read from the code in the Markdown (fenced blocks and `inline code`), never from
prose, so an English "make" is not a make target. Nothing here runs a command.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import tomllib
import typing
from pathlib import Path

import pytest
import yaml

from anomaly_spotter import config
from anomaly_spotter.errors import ConfigError
from conftest import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
SRC = REPO / "src"
README_MAX_LINES = 250
# The console script's sub-commands (tests/test_docs.py states them; the entry module's COMMANDS
# must agree when it exists, see test_the_console_script_is_declared_with_these_sub_commands).
SUBCOMMANDS = {"predict", "readme-table", "plots-template"}
FILE_SUFFIXES = {
    "pt",
    "onnx",
    "json",
    "jsonl",
    "py",
    "yaml",
    "yml",
    "md",
    "csv",
    "png",
    "lock",
    "html",
    "npy",
    "npz",
    "tar",
    "gz",
    "xz",
    "tiff",
}
PLACEHOLDER = re.compile(r"[<$…]")  # <name>, $w, …: not a literal value


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# -- reading Markdown ----------------------------------------------------------------------------

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE = re.compile(r"(`+)(.+?)\1")


def split_markdown(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(prose lines, code lines) with 1-based line numbers; fenced lines go to code."""
    prose, code, fenced = [], [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        (code if fenced else prose).append((number, line))
    return prose, code


def code_snippets(path: Path) -> list[tuple[str, int, str]]:
    """Every piece of code in ``path``: (where, line, text). A fenced command continued with a
    trailing backslash is one snippet; each inline code span is one snippet."""
    prose, code = split_markdown(path.read_text(encoding="utf-8"))
    snippets: list[tuple[str, int, str]] = []
    pending: tuple[int, str] | None = None
    for number, line in code:
        if pending is not None:
            start, text = pending
            pending = None
            line, number = text + " " + line.strip(), start
        if line.rstrip().endswith("\\"):
            pending = (number, line.rstrip()[:-1])
            continue
        snippets.append((_rel(path), number, line))
    if pending is not None:
        snippets.append((_rel(path), pending[0], pending[1]))
    for number, line in prose:
        snippets += [(_rel(path), number, match.group(2)) for match in INLINE.finditer(line)]
    return snippets


def all_snippets() -> list[tuple[str, int, str]]:
    return [s for path in markdown_files() for s in code_snippets(path)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup and punctuation dropped, lower case, spaces -> '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link's text only
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    prose, _ = split_markdown(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose:
        match = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


LINK = re.compile(r"!?\[([^\]]*)\]\(([^)\s]+)\)")


def links(path: Path) -> list[tuple[int, str]]:
    """Every Markdown link target outside code, with its line."""
    prose, _ = split_markdown(path.read_text(encoding="utf-8"))
    found = []
    for number, line in prose:
        without_code = INLINE.sub("", line)
        found += [(number, m.group(2)) for m in LINK.finditer(without_code)]
    return found


def link_problem(source: Path, target: str) -> str | None:
    """Why ``target`` (linked from ``source``) lands nowhere, or None."""
    if re.match(r"^[a-z]+://|^mailto:", target):
        return None  # external: not checked
    file_part, _, anchor = target.partition("#")
    dest = (source.parent / file_part).resolve() if file_part else source
    if not dest.exists():
        return f"{file_part}: no such file"
    if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
        return f"#{anchor}: no such heading in {dest.relative_to(REPO)}"
    return None


# -- what exists ---------------------------------------------------------------------------------


def make_targets() -> set[str]:
    """The rule names of the Makefile (recipe lines, variables and comments skipped)."""
    targets: set[str] = set()
    for line in (REPO / "Makefile").read_text(encoding="utf-8").splitlines():
        if line.startswith(("\t", "#")) or not line.strip():
            continue
        match = re.match(r"^([^:=#]+?)\s*::?(?!=)", line)
        if match and "$(" not in match.group(1):
            targets.update(name for name in match.group(1).split() if not name.startswith("."))  # .PHONY: special
    return targets


def params_key_problem(key: str) -> str | None:
    """Why dotted ``key`` is not a params key (None: it is). Also ``presets.<category>.<section>.<key>``."""
    parts = key.split(".")
    if parts[0] == "presets":
        if len(parts) < 2:
            return None
        rest = parts[2:]
        if rest and rest[0] not in config.PRESET_SECTIONS:
            return f"{key}: a preset may override only {', '.join(config.PRESET_SECTIONS)}"
        parts = rest
        if not parts:
            return None
    if key in config.RENAMED_KEYS:
        return f"{key}: renamed to {config.RENAMED_KEYS[key]}"
    cls: typing.Any = config.Params
    for i, part in enumerate(parts):
        if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
            return f"{key}: {'.'.join(parts[:i])} is a setting, not a section"
        fields = typing.get_type_hints(cls)
        if part not in fields:
            return (
                f"{key}: {part!r} is not a key of {'.'.join(parts[:i]) or 'params.yaml'} "
                f"(valid: {', '.join(sorted(fields))})"
            )
        cls = fields[part]
    return None


def module_path(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def top_level_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def dotted_problem(name: str) -> str | None:
    """``anomaly_spotter.x.y[.attr]``: a module, or a name defined at the top of one."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        path = module_path(".".join(parts[:cut]))
        if path is None:
            continue
        rest = parts[cut:]
        if not rest:
            return None
        if len(rest) == 1 and rest[0] in top_level_names(path):
            return None
        return f"{name}: {'.'.join(parts[:cut])} defines no {'.'.join(rest)}"
    return f"{name}: no such module under src/"


# -- extracting what the docs name ---------------------------------------------------------------

ASSIGNMENT = re.compile(r"""(?:(?<=\s)|^)(?:-S|--set-param|--set)(?:\s+|=)(?:'([^']*)'|"([^"]*)"|([^\s;)]+))""")
MAKE = re.compile(r"(?:^|[\s;&|(])make\s+([A-Za-z][\w.-]*)")
PYTHON_M = re.compile(r"(?:^|[\s;&|(/])python[\d.]*\s+-m\s+([\w.]+)")
PYTHON_SCRIPT = re.compile(r"(?:^|[\s;&|(/])python[\d.]*\s+((?:bench|stages)/[\w./-]+)")
REPO_PATH = re.compile(r"(?<![\w./-])((?:src|stages|bench|tests|docs)/[\w./*-]*[\w/*])")
CONSOLE = re.compile(r"(?<![\w/.-])anomaly-spotter\s+([a-z][\w-]*)")
DOTTED_MODULE = re.compile(r"(?<![\w./-])(anomaly_spotter(?:\.\w+)+)")
SECTIONS = "|".join(f.name for f in dataclasses.fields(config.Params)) + "|presets"
PROSE_KEY = re.compile(rf"(?<![\w./<-])((?:{SECTIONS})(?:\.[\w<>]+)+)")


def assignments(text: str) -> list[tuple[str, str]]:
    """(key, value) of every ``-S key=value`` / ``--set-param`` / ``--set`` in one snippet."""
    found = []
    for match in ASSIGNMENT.finditer(text):
        token = next(g for g in match.groups() if g is not None)
        key, sep, value = token.partition("=")
        found.append((key if sep else f"{key} (no '=value')", value))
    return found


def snippet_assignments() -> list[tuple[str, int, str, list[tuple[str, str]]]]:
    return [(where, line, text, found) for where, line, text in all_snippets() if (found := assignments(text))]


def test_the_docs_show_commands_to_check():
    """The extractors find what they should (a guard against a vacuous pass)."""
    snippets = all_snippets()
    assert sum(len(a) for *_, a in snippet_assignments()) >= 30
    assert any(MAKE.search(t) for *_, t in snippets) and any(PYTHON_M.search(t) for *_, t in snippets)
    assert any(CONSOLE.search(t) for *_, t in snippets) and any(PYTHON_SCRIPT.search(t) for *_, t in snippets)


def test_assignments_are_read_in_every_spelling():
    assert assignments("dvc exp run -S loss.ssim=0.7 -S 'data.categories=[a,b]' --set-param=train.epochs=3") == [
        ("loss.ssim", "0.7"),
        ("data.categories", "[a,b]"),
        ("train.epochs", "3"),
    ]
    assert assignments('x --set "model.layers=[3]" -S train.amp') == [
        ("model.layers", "[3]"),
        ("train.amp (no '=value')", ""),
    ]


def test_every_set_param_names_a_real_key():
    problems = [
        f"{where}:{line}: -S {key}: {problem}"
        for where, line, _, found in snippet_assignments()
        for key, _ in found
        if (problem := params_key_problem(key) if "no '=value'" not in key else "no value")
    ]
    assert problems == []


def test_every_set_param_command_is_valid_params():
    """Each command's ``-S`` values together, over params.yaml, pass the validation a stage runs."""
    from anomaly_spotter.detectors import check_params
    from anomaly_spotter.sources.fetch import check_data

    base = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    problems = []
    for where, line, _, found in snippet_assignments():
        if any(PLACEHOLDER.search(value) for _, value in found):
            continue  # a placeholder value: its key is still checked above
        overrides: dict = {}
        for key, value in found:
            *sections, last = key.split(".")
            node = overrides
            for section in sections:
                node = node.setdefault(section, {})
            node[last] = yaml.safe_load(value)
        try:
            params = config.parse_params(config.deep_merge(base, overrides))
            check_params(params)
            check_data(params.data)
        except ConfigError as exc:
            problems.append(f"{where}:{line}: {exc}")
    assert problems == []


def test_every_params_key_named_in_code_exists():
    """`section.key` written anywhere in code (prose's `model.patch_window`, `score.map: auto`, ...)
    names a real key; an old key only on a line that also names its new one (the renames table)."""
    problems = []
    for path in markdown_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        for where, number, text in code_snippets(path):
            for match in PROSE_KEY.finditer(text):
                key = match.group(1).rstrip(".")
                if key.rsplit(".", 1)[-1] in FILE_SUFFIXES or "<" in key:
                    continue  # model.pt, thresholds.json, presets.<category>: not keys
                if key in config.RENAMED_KEYS and config.RENAMED_KEYS[key] in lines[number - 1]:
                    continue
                problem = params_key_problem(key)
                if problem:
                    problems.append(f"{where}:{number}: {problem}")
    assert problems == []


def test_every_make_target_exists():
    targets = make_targets()
    assert {"setup", "repro", "test"} <= targets  # the parser itself
    named = {(where, line, m.group(1)) for where, line, text in all_snippets() for m in MAKE.finditer(text)}
    assert {(w, n, t) for w, n, t in named if t not in targets} == set(), f"Makefile targets: {sorted(targets)}"


def test_every_python_m_module_exists_and_runs_as_a_script():
    problems = []
    for where, line, text in all_snippets():
        for match in PYTHON_M.finditer(text):
            name = match.group(1)
            if not name.startswith("anomaly_spotter"):
                continue  # pytest, torch.distributed.run: not ours
            path = module_path(name)
            if path is None:
                problems.append(f"{where}:{line}: python -m {name}: no such module under src/")
            elif '__name__ == "__main__"' not in path.read_text(encoding="utf-8"):
                problems.append(f"{where}:{line}: python -m {name}: {_rel(path)} has no __main__ block")
    assert problems == []


def test_every_script_and_repository_path_exists():
    problems = []
    for where, line, text in all_snippets():
        paths = {m.group(1) for m in PYTHON_SCRIPT.finditer(text)} | {m.group(1) for m in REPO_PATH.finditer(text)}
        for rel in sorted(paths):
            if PLACEHOLDER.search(rel):
                continue
            if not (list(REPO.glob(rel.rstrip("/"))) if "*" in rel else (REPO / rel).exists()):
                problems.append(f"{where}:{line}: {rel}: no such file")
    assert problems == []


def test_every_dotted_module_name_exists():
    problems = [
        f"{where}:{line}: {problem}"
        for where, line, text in all_snippets()
        for m in DOTTED_MODULE.finditer(text)
        if (problem := dotted_problem(m.group(1)))
    ]
    assert problems == []


def test_every_console_sub_command_exists():
    named = {(where, line, m.group(1)) for where, line, text in all_snippets() for m in CONSOLE.finditer(text)}
    assert named, "the docs show the console script"
    assert {(w, n, c) for w, n, c in named if c not in SUBCOMMANDS} == set(), f"sub-commands: {sorted(SUBCOMMANDS)}"


def test_the_console_script_is_declared_with_these_sub_commands():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8")).get("project", {}).get("scripts", {})
    assert "anomaly-spotter" in scripts, "pyproject.toml [project.scripts] declares no anomaly-spotter"
    module, _, _ = scripts["anomaly-spotter"].partition(":")
    path = module_path(module)
    if path is None:
        pytest.skip(f"{module}: the console script's module is not written yet")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        target = (
            node.target
            if isinstance(node, ast.AnnAssign)
            else (node.targets[0] if isinstance(node, ast.Assign) else None)
        )
        if isinstance(target, ast.Name) and target.id == "COMMANDS" and isinstance(node.value, ast.Dict):
            assert {ast.literal_eval(k) for k in node.value.keys if k is not None} == SUBCOMMANDS
            return
    pytest.skip(f"{_rel(path)}: no COMMANDS dict to compare with")


# -- the README's shape and the links ------------------------------------------------------------


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_starts_with_the_two_commands():
    lines = [line for line in README.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert lines[0].startswith("# ") and FENCE.match(lines[1]), "the title, then the commands block"
    block = lines[2 : next(i for i in range(2, len(lines)) if FENCE.match(lines[i]))]
    assert [line.split()[:2] for line in block] == [["make", "repro"], ["make", "test"]]
    assert (REPO / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1] == "make test"


def test_readme_has_a_contents_list_near_the_top_covering_every_section():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "## Contents"), None)
    assert start is not None and start < 40, "a '## Contents' heading in the first 40 lines"
    items = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if line.strip():
            match = re.match(r"^\s*[-*]\s+\[[^\]]+\]\(([^)]+)\)\s*$", line)
            assert match, f"not a contents entry: {line!r}"
            items.append(match.group(1))
    assert items
    assert [link_problem(README, t) for t in items if link_problem(README, t)] == []
    sections = [slug(line[3:]) for _, line in split_markdown(text)[0] if line.startswith("## ")]
    assert {f"#{s}" for s in sections if s != "contents"} <= set(items), "every ## section is in the contents"


def test_every_docs_page_is_linked_from_the_readme_and_exists():
    linked = {
        t.partition("#")[0] for _, t in links(README) if t.startswith("docs/") and t.partition("#")[0].endswith(".md")
    }
    pages = {_rel(p) for p in DOCS.glob("*.md")}
    assert linked, "the README maps docs/"
    assert {p for p in linked if not (REPO / p).is_file()} == set()
    assert pages - linked == set(), "a page in docs/ the README does not map"


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_each_docs_page_opens_with_a_title_and_a_summary(page):
    lines = (DOCS / page).read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# ")
    paragraph = []
    for line in lines[1:]:
        if not line.strip() and paragraph:
            break
        if line.strip():
            paragraph.append(line)
    assert paragraph and not paragraph[0].startswith(("#", "-", "*", "|", "```")), "a summary paragraph under the title"
    assert len(" ".join(paragraph).split()) >= 30, "a summary paragraph, not a line"


def test_every_link_lands_on_a_file_and_heading():
    problems = [
        f"{_rel(path)}:{line}: {problem}"
        for path in markdown_files()
        for line, target in links(path)
        if (problem := link_problem(path, target))
    ]
    assert problems == []


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Ablation: pretrained features (`model.kind: patchcore`)", "ablation-pretrained-features-modelkind-patchcore"),
        ("Stage → package", "stage--package"),
        ("Judge new images: `predict`", "judge-new-images-predict"),
    ],
)
def test_anchors_follow_github(heading, anchor):
    assert slug(heading) == anchor
