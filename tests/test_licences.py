"""The licence gate: what a model card's front matter says, and what a commercial claybot does with it — offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.core import licences
from pipeline.core.errors import ModelError
from pipeline.core.licences import Licence, check, licence_table_markdown, read_licence

KEY = "styles.likeness.edit.model"
WHAT = "black-forest-labs/FLUX.2-klein-4B"


def _model(root: Path, card: str | None = None, *, index: dict[str, object] | None = None, name: str = "model") -> Path:
    """A model folder with a README.md of ``card`` (front matter and a line of text) and/or a model_index.json."""
    folder = root / name
    folder.mkdir(parents=True)
    if card is not None:
        (folder / "README.md").write_text(card, encoding="utf-8")
    if index is not None:
        (folder / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
    (folder / "model.safetensors").write_bytes(b"not really weights")
    return folder


def _card(**meta: str) -> str:
    front = "\n".join(f"{key}: {value}" for key, value in meta.items())
    return f"---\n{front}\n---\n\n# A model\n\nIt makes pictures.\n"


# -- read_licence and Licence.use ---------------------------------------------------------------------------------


def test_apache_card_passes(tmp_path: Path) -> None:
    folder = _model(tmp_path, _card(license="apache-2.0"))
    licence = read_licence(folder)
    assert licence == Licence("apache-2.0") and licence.use == "commercial"
    assert check(KEY, WHAT, folder, commercial=True) is None


def test_flux_non_commercial_refused_when_commercial(tmp_path: Path) -> None:
    folder = _model(tmp_path, _card(license="other", license_name="flux-non-commercial-license",
                                    license_link="LICENSE.md"))
    licence = read_licence(folder)
    assert licence == Licence("other", "flux-non-commercial-license", "LICENSE.md")
    assert licence is not None and licence.use == "non-commercial"
    with pytest.raises(ModelError) as err:
        check(KEY, "black-forest-labs/FLUX.2-klein-9B", folder, commercial=True)
    message = str(err.value)
    assert message.startswith(f"{KEY}: ")
    assert "black-forest-labs/FLUX.2-klein-9B" in message and "flux-non-commercial-license" in message
    assert "commercial = false" in message and "\n" not in message
    assert check(KEY, WHAT, folder, commercial=False) is None  # a claybot that is not commercial is not nagged


def test_cc_by_nc_refused(tmp_path: Path) -> None:
    folder = _model(tmp_path, _card(license="CC-BY-NC-4.0"))
    assert read_licence(folder) == Licence("cc-by-nc-4.0")
    with pytest.raises(ModelError, match="cc-by-nc-4.0"):
        check(KEY, WHAT, folder, commercial=True)


@pytest.mark.parametrize(
    ("licence", "use"),
    [
        (Licence("mit"), "commercial"),
        (Licence("openrail++"), "commercial"),
        (Licence("creativeml-openrail-m"), "commercial"),
        (Licence("cc-by-nc-sa-4.0"), "non-commercial"),
        (Licence("cc-by-nc-nd-4.0"), "non-commercial"),
        (Licence("other", "flux-1-dev-non-commercial-license"), "non-commercial"),  # FLUX.1 Kontext [dev]
        (Licence("other", "FLUX Non-Commercial License"), "non-commercial"),
        (Licence("other", "Attribution-NonCommercial 4.0"), "non-commercial"),
        (Licence("other", "weights", "https://creativecommons.org/licenses/by-nc/4.0/"), "non-commercial"),
        (Licence("other", "research_only licence"), "non-commercial"),
        (Licence("other", "non_commercial"), "non-commercial"),
        (Licence("apache-2.0", "", "https://example.com/non-commercial.md"), "non-commercial"),  # the stricter wins
        (Licence("other", "flux-dev", "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md"),
         "non-commercial"),
        (Licence("other", "license-flux1-dev"), "non-commercial"),
        (Licence("other", "ltxv-open-weights-license"), "unknown"),
        (Licence("llama3"), "unknown"),
        (Licence("other"), "unknown"),
        (Licence("mit, apache-2.0"), "commercial"),
        (Licence("mit, other"), "unknown"),
        (Licence("cc-by-4.0"), "commercial"),  # "nc" only counts as a Creative Commons component
        (Licence("other", "concept licence"), "unknown"),
    ],
)
def test_use(licence: Licence, use: str) -> None:
    assert licence.use == use


def test_no_readme_warns(tmp_path: Path) -> None:
    folder = _model(tmp_path)
    assert read_licence(folder) is None
    warning = check(KEY, WHAT, folder, commercial=True)
    assert warning is not None and warning.startswith(f"{KEY}: ") and WHAT in warning
    assert "no licence" in warning
    assert check(KEY, WHAT, folder, commercial=False) is None


def test_card_without_licence_warns(tmp_path: Path) -> None:
    folder = _model(tmp_path, _card(tags="clay"))
    assert read_licence(folder) is None
    assert "no licence stated" in (check(KEY, WHAT, folder, commercial=True) or "")


@pytest.mark.parametrize(
    "card",
    [
        "---\nlicense: [apache-2.0\nlicense_name: {\n---\n",  # broken YAML
        "---\n- apache-2.0\n- mit\n---\n",  # a list, not a mapping
        "---\nlicense: " + "[" * 1000 + "\n---\n",  # nested past the parser's recursion limit
    ],
)
def test_malformed_card_warns(tmp_path: Path, card: str) -> None:
    folder = _model(tmp_path, card)
    assert read_licence(folder) is None
    warning = check(KEY, WHAT, folder, commercial=True)
    assert warning is not None and "no licence" in warning and "README.md could not be read" in warning


def test_card_not_utf8_warns(tmp_path: Path) -> None:
    folder = _model(tmp_path)
    (folder / "README.md").write_bytes(b"---\nlicense: \xff\xfe\n---\n")
    assert read_licence(folder) is None
    assert "README.md could not be read" in (check(KEY, WHAT, folder, commercial=True) or "")


def test_model_index_licence(tmp_path: Path) -> None:
    folder = _model(tmp_path, index={"_class_name": "StableDiffusionXLPipeline", "license": "MIT"})
    assert read_licence(folder) == Licence("mit")
    assert check(KEY, WHAT, folder, commercial=True) is None


def test_card_wins_over_model_index(tmp_path: Path) -> None:
    folder = _model(tmp_path, _card(license="cc-by-nc-4.0"), index={"license": "mit"})
    assert read_licence(folder) == Licence("cc-by-nc-4.0")


def test_model_index_used_when_card_is_malformed(tmp_path: Path) -> None:
    folder = _model(tmp_path, "---\nlicense: [\n---\n", index={"license": "apache-2.0"})
    assert read_licence(folder) == Licence("apache-2.0")


def test_malformed_model_index_warns(tmp_path: Path) -> None:
    folder = _model(tmp_path)
    (folder / "model_index.json").write_text('{"license": "mit"', encoding="utf-8")
    assert read_licence(folder) is None
    assert "model_index.json could not be read" in (check(KEY, WHAT, folder, commercial=True) or "")


def test_model_index_licence_not_a_string_ignored(tmp_path: Path) -> None:
    folder = _model(tmp_path, index={"license": {"id": "mit"}})
    assert read_licence(folder) is None


def test_single_file_reads_readme_beside_it(tmp_path: Path) -> None:
    folder = _model(tmp_path, _card(license="creativeml-openrail-m"))
    lora = folder / "model.safetensors"
    assert read_licence(lora) == Licence("creativeml-openrail-m")
    assert check("styles.clay.lora", "artificialguybr/ClayAnimationRedmond", lora, commercial=True) is None


def test_single_file_in_snapshot_subfolder_reads_snapshot_card(tmp_path: Path) -> None:
    snapshot = tmp_path / "hub" / "models--owner--name" / "snapshots" / "0123abcd"
    _model(snapshot.parent, _card(license="cc-by-nc-4.0"), name=snapshot.name)
    (snapshot / "loras").mkdir()
    (snapshot / "loras" / "clay.safetensors").write_bytes(b"weights")
    assert read_licence(snapshot / "loras" / "clay.safetensors") == Licence("cc-by-nc-4.0")
    assert read_licence(snapshot / "loras") == Licence("cc-by-nc-4.0")  # "owner/name:loras", a folder of the repo


def test_file_outside_a_snapshot_reads_only_its_own_folder(tmp_path: Path) -> None:
    _model(tmp_path, _card(license="mit"), name="models")
    (tmp_path / "models" / "sub").mkdir()
    (tmp_path / "models" / "sub" / "x.safetensors").write_bytes(b"weights")
    assert read_licence(tmp_path / "models" / "sub" / "x.safetensors") is None


def test_other_with_unknown_name_warns(tmp_path: Path) -> None:
    folder = _model(tmp_path, _card(license="other", license_name="llama3", license_link="https://example.com/L"))
    warning = check(KEY, "meta/some-model", folder, commercial=True)
    assert warning is not None and warning.startswith(f"{KEY}: ") and "meta/some-model" in warning
    assert "licence 'other' (llama3)" in warning and "https://example.com/L" in warning and "Read it" in warning
    assert check(KEY, WHAT, folder, commercial=False) is None


def test_missing_path_warns(tmp_path: Path) -> None:
    assert "no licence" in (check(KEY, WHAT, tmp_path / "nowhere", commercial=True) or "")


# -- hostile cards -------------------------------------------------------------------------------------------------


def test_huge_licence_name_gives_a_short_line(tmp_path: Path) -> None:
    name = "non-commercial " + "x" * 1_000_000
    folder = _model(tmp_path, _card(license="other", license_name=name))
    with pytest.raises(ModelError) as err:
        check(KEY, WHAT, folder, commercial=True)
    assert len(str(err.value)) < 500 and "…" in str(err.value)
    folder = _model(tmp_path, _card(license="other", license_name="y" * 1_000_000, license_link="z" * 1_000_000),
                    name="unknown")
    warning = check(KEY, WHAT, folder, commercial=True)
    assert warning is not None and len(warning) < 500


def test_control_characters_are_stripped(tmp_path: Path) -> None:
    forged = '"flux-non-commercial\\r\\n\\u001b[2J2026-12-01 INFO all licences fine\\u202e"'  # YAML escapes
    folder = _model(tmp_path, _card(license="other", license_name=forged))
    with pytest.raises(ModelError) as err:
        check(KEY, "owner/\x1b[31mname\n", folder, commercial=True)
    message = str(err.value)
    assert not any(ch in message for ch in "\r\n\x1b\u202e")  # one line: the forged log line stays inside it
    assert "(flux-non-commercial [2J2026-12-01 INFO all licences fine)" in message
    assert "owner/[31mname" in message
    folder = _model(tmp_path, _card(license="other", license_name='"odd\\tname\\x00\\u2028"'), name="unknown")
    warning = check(KEY, WHAT, folder, commercial=True)
    assert warning is not None and not any(ch in warning for ch in "\t\x00\u2028")
    assert "(odd name)" in warning


def test_card_too_large_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(licences, "MAX_CARD_BYTES", 100)
    folder = _model(tmp_path, _card(license="apache-2.0", license_name="x" * 200))
    assert read_licence(folder) is None
    assert "too large" in (check(KEY, WHAT, folder, commercial=True) or "")


# -- the table for the README --------------------------------------------------------------------------------------


def test_licence_table_markdown() -> None:
    table = licence_table_markdown()
    lines = table.splitlines()
    assert lines[0].startswith("| Model | Licence | Commercial use |") and len(lines) == 2 + len(licences.LICENCE_TABLE)
    assert all(line.count(" | ") == 3 for line in lines)
    rows = {row.model.split(" (")[0]: row for row in licences.LICENCE_TABLE}
    assert rows["FLUX.2 [klein] 4B"].commercial == "yes" and rows["FLUX.2 [klein] 9B"].commercial == "no"
    assert rows["FLUX.1 Kontext [dev]"].commercial == "no" and rows["FLUX.2 [dev]"].commercial == "no"
    assert rows["LTX-Video 0.9.7 distilled"].commercial == "read it"
    assert {row.commercial for row in licences.LICENCE_TABLE} <= {"yes", "no", "read it"}
