"""The report's probe sections (issue 20): a section per recorded probe with its per-round
table (value, implied max_lr, cost, CV) and the `plot probes` figure; nothing without
probes.json; one line, never a traceback, for a damaged or hostile probes.json. The tests
parse the HTML (html.parser) and read the numbers back."""
from __future__ import annotations

import base64
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from gradscope.plot.report import build_report, probes_html
from gradscope.store.checksum import value_crc
from gradscope.store.probes import FORMAT, write_probes

LR0 = 0.05


class Sections(HTMLParser):
    """{h4 heading: [table rows as lists of cell texts]} and the note paragraphs."""

    def __init__(self):
        super().__init__()
        self.tables, self.notes, self.h3 = {}, [], []
        self._tag, self._text, self._cur, self._row, self._cls = None, "", None, None, None

    def handle_starttag(self, tag, attrs):
        if tag in ("h3", "h4", "th", "td", "p"):
            self._tag, self._text, self._cls = tag, "", dict(attrs).get("class")
        if tag == "tr" and self._cur is not None:
            self._row = []

    def handle_data(self, data):
        if self._tag:
            self._text += data

    def handle_endtag(self, tag):
        if tag != self._tag and tag not in ("tr",):
            return
        if tag == "h4":
            self._cur = self._text.strip()
            self.tables[self._cur] = []
        elif tag == "h3":
            self.h3.append(self._text.strip())
            self._cur = None
        elif tag in ("th", "td") and self._row is not None:
            self._row.append(self._text.strip())
        elif tag == "tr" and self._row is not None:
            self.tables[self._cur].append(self._row)
            self._row = None
        elif tag == "p" and self._cls == "note":
            self.notes.append(self._text.strip())
        self._tag = None if tag != "tr" else self._tag


def parse(text: str) -> Sections:
    s = Sections()
    s.feed(text)
    return s


def _rec(k: int, probe: str, key: str, vals: list, **kw) -> dict:
    return {"round": k, "at": "start", "probe": probe, "sparsity": 1 - 0.8 ** k, "values": {key: vals},
            "cv": {key: kw.pop("cv", None)}, "repeats": len(vals), "fb_equiv": kw.pop("fb", 2.0),
            "share_of_oracle_round": kw.pop("share", 0.004), "oracle_cost_assumed": kw.pop("assumed", True), **kw}


@pytest.fixture
def run(tmp_path) -> Path:
    """A finished 4-round run directory (config, rounds) with bn-norm and sharpness recorded."""
    d = tmp_path / "run"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"prune": {"prune_rate": 0.2, "rounds": 4}, "schedule": {"lag": 1}}))
    (d / "rounds.json").write_text(json.dumps([{"round": k, "sparsity": 1 - 0.8 ** k, "target_sparsity": 1 - 0.8 ** k,
                                                "max_lr": LR0, "val_acc": 0.5 + 0.01 * k, "test_acc": 0.5}
                                               for k in range(4)]))
    r = [1.0, 0.97, 0.93, 0.9]
    lam = [[20.0, 22.0], [15.0, 16.0], [12.0, 12.5], [10.0, 10.4]]
    recs = [_rec(k, "bn-norm", "value", [r[k]], fb=0.1, share=0.0001) for k in range(4)]
    recs += [_rec(k, "sharpness", "value", lam[k], cv=float(np.std(lam[k], ddof=1) / np.mean(lam[k])), fb=900.0,
                  share=5.36) for k in range(4)]
    write_probes(d, recs)
    return d


def _col(rows: list, name: str) -> list:
    i = next(j for j, h in enumerate(rows[0]) if h.startswith(name))
    return [float(x) if x else float("nan") for x in (row[i] for row in rows[1:])]


def test_a_section_per_probe_with_values_implied_max_lr_cost_and_cv(run):
    text = build_report([run], bootstrap=0)
    s = parse(text)
    assert "Probes" in s.h3
    bn = s.tables["Probe bn-norm, measured at each round's start (the pruned, rewound network)"]
    sh = s.tables["Probe sharpness, measured at each round's start (the pruned, rewound network)"]
    assert _col(bn, "round") == [0, 1, 2, 3] and _col(bn, "sparsity (%)") == pytest.approx([0, 20, 36, 48.8], abs=1e-3)
    assert _col(bn, "implied max_lr") == pytest.approx([LR0 * v for v in (1.0, 0.97, 0.93, 0.9)], rel=1e-3)
    lam = np.array([21.0, 15.5, 12.25, 10.2])  # the mean over each round's two repeats
    assert _col(sh, "lambda_max") == pytest.approx(lam, rel=1e-3)
    assert _col(sh, "implied max_lr") == pytest.approx(LR0 * lam[0] / lam, rel=1e-3)  # inverse rule
    assert _col(sh, "cost (forward+backward passes)") == [900.0] * 4
    assert _col(sh, "cost (% of an Oracle round, 7 x 3 grid assumed)") == [536.0] * 4  # labelled as assumed
    assert _col(sh, "CV over repeats")[0] == pytest.approx(np.std([20, 22], ddof=1) / 21, rel=1e-3)
    assert not any(h.startswith("CV") for h in bn[0])  # deterministic: no CV column, and it says why
    assert "No CV: a deterministic probe, measured once per round." in text
    imgs = re.findall(r'<img alt="probes&#x27; implied max_lr \(start\)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"',
                      text)
    assert len(imgs) == 1 and base64.b64decode(imgs[0])[:4] == b"\x89PNG"
    assert "gradients not recorded" in text  # probes shown for a run without run.h5


def test_the_figure_is_plot_probes_drawn_on_the_report_axes(run, monkeypatch):
    """The report draws with `plot probes`' function (draw_probes), one line per probe."""
    import gradscope.plot.probes as P
    seen = {}
    real = P.draw_probes

    def spy(curves, max_lr0=None, at="start", ax=None):
        ax = real(curves, max_lr0, at, ax=ax)
        seen.update({l.get_label(): l.get_ydata() for l in ax.get_lines()})
        return ax
    monkeypatch.setattr(P, "draw_probes", spy)
    probes_html(run)
    assert np.allclose(seen["bn-norm"], [0.05, 0.0485, 0.0465, 0.045])
    assert "constant max_lr 0.05 (round 0's)" in seen


def test_no_probes_json_no_section_and_no_error(run):
    os.unlink(run / "probes.json")
    assert probes_html(run) == ""
    text = build_report([run], bootstrap=0)
    assert "Probes" not in parse(text).h3 and "probes.json" not in text


def _raw(run: Path, records) -> None:
    """probes.json with a valid checksum over whatever ``records`` is (a hostile writer)."""
    canon = json.loads(json.dumps(records, sort_keys=True))
    (run / "probes.json").write_text(json.dumps({"format": FORMAT, "crc32": value_crc(canon), "records": canon}))


def _damage(run: Path, how: str) -> None:
    p = run / "probes.json"
    if how == "edited":
        p.write_text(p.read_text().replace('"round": 1', '"round": 2', 1))
    elif how == "truncated":
        p.write_bytes(p.read_bytes()[:50])
    elif how == "not-a-probes-file":
        p.write_text(json.dumps({"format": "something/9", "records": []}))
    elif how == "symlink":
        os.unlink(p)
        (run / "elsewhere.json").write_text("{}")
        os.symlink(run / "elsewhere.json", p)
    elif how == "directory":
        os.unlink(p)
        p.mkdir()
    elif how == "records-of-strings":
        _raw(run, ["a", "b"])
    elif how == "values-not-lists":
        _raw(run, [{"round": 0, "at": "start", "probe": "bn-norm", "values": {"value": "1.0"}}])
    elif how == "round-a-string":
        _raw(run, [{"round": "0", "at": "start", "probe": "bn-norm", "values": {"value": [1.0]}}])


@pytest.mark.parametrize("how, words", [
    ("edited", "fails its checksum"), ("truncated", "is not readable JSON"),
    ("not-a-probes-file", "is not a gradscope probes file"), ("symlink", "is not a regular file"),
    ("directory", "is not a regular file"), ("records-of-strings", "record 0 of probes.json lacks"),
    ("values-not-lists", "record 0 of probes.json lacks"), ("round-a-string", "record 0 of probes.json lacks")])
def test_a_damaged_or_hostile_probes_json_is_one_line_in_the_report(run, how, words):
    _damage(run, how)
    s = parse(probes_html(run))
    assert len(s.notes) == 1 and s.notes[0].startswith("probes.json skipped: ") and words in s.notes[0], s.notes
    assert "\n" not in s.notes[0] and "Traceback" not in s.notes[0]


def test_a_hostile_record_that_passes_the_checks_and_an_unknown_probe_are_skipped_alone(run):
    """A record with a valid checksum but nonsense inside (cv not a mapping of numbers, cost a
    string), and a probe this gradscope does not know: each skipped in one line, the rest shown;
    the whole report still builds."""
    recs = [_rec(k, "bn-norm", "value", [1.0 - 0.02 * k]) for k in range(3)]
    recs += [_rec(k, "noise-scale", "value", [0.5, 0.6], fb="lots", cv={"value": "x"}) for k in range(2)]
    recs += [_rec(0, "<script>x</script>", "value", [1.0])]
    recs += [{"round": 0, "at": "start", "probe": "sharpness", "values": {"value": [20.0]}}]  # no cv, no cost
    _raw(run, recs)
    text = build_report([run], bootstrap=0)
    s = parse(text)
    assert _col(s.tables["Probe bn-norm, measured at each round's start (the pruned, rewound network)"],
                "implied max_lr") == pytest.approx([0.05, 0.049, 0.048])
    ns = s.tables["Probe noise-scale, measured at each round's start (the pruned, rewound network)"]
    assert np.isnan(_col(ns, "cost (forward+backward passes)")).all()  # a string is no number: blank, not shown as one
    assert any("is not a probe this gradscope knows" in n for n in s.notes)
    assert any(n.startswith("skipped: its records are malformed (KeyError") for n in s.notes)
    assert len(re.findall(r'<img alt="probes&#x27; implied max_lr \(start\)"', text)) == 1  # the others still drawn
    assert "<script>x" not in text  # escaped
    assert "Per-round table" in text and "Traceback" not in text
