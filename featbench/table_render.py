"""Rendering of :class:`featbench.table_model.Table` objects as CSV, booktabs LaTeX and Markdown.

Every name that comes from a results file is escaped for its format: LaTeX specials; HTML, pipes, newlines and
emphasis characters in Markdown; spreadsheet formula starts (``= + - @``) in CSV text cells (numbers are never
touched). Rules for bold, rank and footnotes are in :mod:`featbench.tables`.
"""

from __future__ import annotations

from featbench.errors import FeatbenchError
from featbench.table_model import (AVERAGE, FALLBACK_NOTE, FORMATS, MAX_DECIMALS, METRIC_NAMES, MISSING, ORACLE_NOTE,
                                   PARAMS_HEADER, TRANSDUCTIVE_NOTE, UNKNOWN_PARAMS_NOTE, Table, format_count_range)

_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


_LATEX_PREAMBLE = (r"\documentclass{article}", r"\usepackage{booktabs}", r"\usepackage[T1]{fontenc}",
                   r"\usepackage[utf8]{inputenc}", r"\begin{document}")


def latex_escape(text: str) -> str:
    """Text as inert LaTeX: specials escaped, line breaks (a blank line would end the tabular) as spaces."""
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text).replace("\r", " ").replace("\n", " "))


_MD_ESCAPES = {"\\": "\\\\", "|": r"\|", "*": r"\*", "`": r"\`", "[": r"\[", "]": r"\]",
               "&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": " ", "\n": " "}


def _md_escape(text: str) -> str:
    """A name as inert Markdown text: no HTML, no line break, no table cell break, no emphasis or link."""
    return "".join(_MD_ESCAPES.get(ch, ch) for ch in str(text))


#: a spreadsheet runs a cell starting with one of these as a formula (CSV injection)
_CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_text(text) -> str:
    """A text cell that a spreadsheet shows as text: a leading formula character gets a ' in front."""
    text = str(text)
    return "'" + text if text.startswith(_CSV_FORMULA_START) else text


def _dim_label(dim: str, value) -> str:
    if dim == "shots":
        return f"{int(value)}-shot"
    return str(value)


def _best_mask(table: Table, decimals: int):
    """Boolean frame: cells holding the best head's value among the honest cells (see the module docstring):
    a cell built on test-set selection or a fallback is never bold, and never keeps an honest cell from it."""
    import pandas as pd

    rounded = table.mean.round(decimals).where(~table.flagged())
    best = pd.DataFrame(False, index=rounded.index, columns=rounded.columns)
    if table.rows == "head":
        groups = [rounded] if table.block_dim is None else [g for _, g in rounded.groupby(level=0, sort=False)]
        for g in groups:
            if len(g) < 2:
                continue
            top = g.max(axis=0)
            best.loc[g.index] = g.eq(top, axis=1) & g.notna()
    elif table.cols == "head":
        if rounded.shape[1] >= 2:
            top = rounded.max(axis=1)
            best = rounded.eq(top, axis=0) & rounded.notna()
    elif table.block_dim == "head":
        inner = rounded.index.get_level_values(1)
        for key in dict.fromkeys(inner):
            sel = inner == key
            g = rounded[sel]
            if len(g) < 2:
                continue
            top = g.max(axis=0)
            best.loc[sel] = (g.eq(top, axis=1) & g.notna()).to_numpy()
    return best.fillna(False).astype(bool)


def _cell_parts(table: Table, r, c, decimals: int, per_cell_n: bool):
    mean = table.mean.iat[r, c]
    if mean != mean:  # NaN
        return None
    std = table.std.iat[r, c]
    n = int(table.n.iat[r, c])
    fallback = table.fallback is not None and bool(table.fallback.iat[r, c])
    transductive = table.transductive is not None and bool(table.transductive.iat[r, c])
    return dict(mean=f"{mean:.{decimals}f}", std=None if std != std else f"{std:.{decimals}f}",
                n=n if per_cell_n else None, oracle=bool(table.oracle.iat[r, c]), fallback=fallback,
                transductive=transductive, published=_published_parts(table, r, c, mean, decimals))


def _published_parts(table: Table, r, c, mean: float, decimals: int):
    """(published, ours - published) as printed, or None where the cell has no published number."""
    if table.published is None:
        return None
    pub = table.published.iat[r, c]
    if pub != pub:
        return None
    return f"{pub:.{decimals}f}", f"{mean - pub:+.{decimals}f}"


def _caption(table: Table, seeds: int | None) -> str:
    metric = METRIC_NAMES.get(table.metric, table.metric)
    proto = f", {table.protocol} protocol" if table.protocol else ""
    if table.overrides:
        proto += " with overrides" if table.protocol else ", with overrides"
    over = f" over {seeds} seed{'s' if seeds != 1 else ''}" if seeds else " over seeds (seed count in parentheses)"
    spread = "95% CI half-width (t, n-1 df)" if table.spread == "ci" else "population std"
    return f"{metric}: mean ± {spread}{over}{proto}."


def _block_title(table: Table, value) -> str:
    return f"{table.block_dim}: {_dim_label(table.block_dim, value)}" if table.block_dim == "shots" else f"{value}"


def render(table: Table, fmt: str = "csv", *, decimals: int = 2, standalone: bool = False) -> str:
    """Deterministic text of a table: ``csv`` (numbers, one column each for mean/std/n), ``latex`` (booktabs,
    a complete ``table`` environment; ``standalone=True`` wraps it in a compilable document) or ``markdown``."""
    check_decimals(decimals)
    if fmt == "csv":
        return _render_csv(table, decimals)
    if fmt == "latex":
        return _render_latex(table, decimals, standalone)
    if fmt == "markdown":
        return _render_markdown(table, decimals)
    raise FeatbenchError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")


def check_decimals(decimals) -> int:
    if not isinstance(decimals, int) or isinstance(decimals, bool) or not 0 <= decimals <= MAX_DECIMALS:
        raise FeatbenchError(f"--decimals {decimals}: give a whole number from 0 to {MAX_DECIMALS}")
    return decimals


def render_groups(groups: list[tuple[str, Table]], fmt: str = "csv", *, decimals: int = 2,
                  standalone: bool = False) -> str:
    """Render the tables of :func:`aggregate_by_encoder`: one table as :func:`render` does; several under an
    "Encoder: ..." heading each (Markdown, LaTeX) or with a leading ``encoder`` column (CSV)."""
    if fmt not in FORMATS:
        raise FeatbenchError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    check_decimals(decimals)
    if len(groups) == 1:
        return render(groups[0][1], fmt, decimals=decimals, standalone=standalone)
    if fmt == "markdown":
        return "\n".join(f"### Encoder: {_md_escape(enc)}\n\n" + render(t, fmt, decimals=decimals) for enc, t in groups)
    if fmt == "latex":
        body = "\n".join(render(t, fmt, decimals=decimals) for _, t in groups)  # each names its encoder
        return (("\n".join(_LATEX_PREAMBLE) + "\n" + body + r"\end{document}" + "\n") if standalone else body)
    blocks, headers = [], []
    for enc, t in groups:
        lines = render(t, "csv", decimals=decimals).splitlines()
        headers.append(lines[0])
        blocks.append([lines[0]] + [_csv_join(enc, ln) for ln in lines[1:]])
    if len(set(headers)) == 1:
        return "\n".join(["encoder," + headers[0]] + [ln for b in blocks for ln in b[1:]]) + "\n"
    return "\n\n".join("\n".join(["encoder," + b[0]] + b[1:]) for b in blocks) + "\n"


def _csv_join(first: str, line: str) -> str:
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow([_csv_text(first)])
    return buf.getvalue() + "," + line


def _row_keys(table: Table):
    for i, key in enumerate(table.mean.index):
        if table.block_dim:
            yield i, key[0], key[1]
        else:
            yield i, None, key


def _render_csv(table: Table, decimals: int) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = ([table.block_dim] if table.block_dim else []) + [table.rows]
    if table.params is not None:  # exact counts (an Average row: the rounded mean)
        header += ["trainable params min", "trainable params max"]
    if table.rank is not None:
        header.append("rank")
    for c in table.mean.columns:
        lab = _dim_label(table.cols, c)
        spread = "ci95" if table.spread == "ci" else "std"
        header += [f"{lab} mean", f"{lab} {spread}", f"{lab} n", f"{lab} oracle", f"{lab} fallback"]
        header += [f"{lab} transductive"] if table.any_transductive else []
        header += [f"{lab} published", f"{lab} delta", f"{lab} published source"] if table.published is not None else []
    w.writerow([_csv_text(h) for h in header])
    for i, block, row in _row_keys(table):
        out = [_csv_text(v) for v in ([block] if table.block_dim else []) + [row]]
        if table.params is not None:
            out += ["" if v != v else int(round(v)) for v in (table.params["low"].iat[i], table.params["high"].iat[i])]
        if table.rank is not None:
            rk = table.rank.iat[i]
            out.append("" if rk != rk else int(rk))
        for j in range(table.mean.shape[1]):
            m, s, n = table.mean.iat[i, j], table.std.iat[i, j], int(table.n.iat[i, j])
            fb = table.fallback is not None and bool(table.fallback.iat[i, j])
            out += ["" if m != m else f"{m:.{decimals + 2}f}", "" if s != s else f"{s:.{decimals + 2}f}",
                    n if m == m else "", int(bool(table.oracle.iat[i, j])) if m == m else "",
                    int(fb) if m == m else ""]
            if table.any_transductive:
                out.append(int(bool(table.transductive.iat[i, j])) if m == m else "")
            if table.published is not None:
                out += _csv_published(table, i, j, m, decimals)
        w.writerow(out)
    return buf.getvalue()


def _csv_published(table: Table, i, j, mean: float, decimals: int) -> list:
    """The published number, ours - published (blank without either) and its source, for one CSV cell."""
    pub = table.published.iat[i, j]
    if pub != pub:
        return ["", "", ""]
    delta = "" if mean != mean else f"{mean - pub:.{decimals + 2}f}"
    return [f"{pub:.{decimals + 2}f}", delta, _csv_text(table.published_source.iat[i, j])]


def _format_cell(parts, bold: bool, style: str) -> str:
    if parts is None:
        return MISSING if style == "markdown" else "---"
    if style == "latex":
        text = parts["mean"]
        text = rf"\textbf{{{text}}}" if bold else text
        if parts["oracle"]:
            text += r"$^\dagger$"
        if parts["fallback"]:
            text += r"$^\ddagger$"
        if parts["transductive"]:
            text += r"$^\S$"
        if parts["std"] is not None:
            text += rf" $\pm$ {parts['std']}"
        if parts["n"] is not None:
            text += f" ({parts['n']})"
        if parts["published"] is not None:
            text += r" {\scriptsize[pub %s, $\Delta\,%s$]}" % parts["published"]
        return text
    text = parts["mean"]
    text = f"**{text}**" if bold else text
    if parts["oracle"]:
        text += "†"
    if parts["fallback"]:
        text += "‡"
    if parts["transductive"]:
        text += "§"
    if parts["std"] is not None:
        text += f" ± {parts['std']}"
    if parts["n"] is not None:
        text += f" ({parts['n']})"
    if parts["published"] is not None:
        text += " [pub %s, Δ %s]" % parts["published"]
    return text


def _footnotes(table: Table, seeds: int | None) -> list[str]:
    notes = [_caption(table, seeds)]
    if table.any_oracle:
        notes.append(f"† {ORACLE_NOTE}")
    if table.any_fallback:
        notes.append(f"‡ {FALLBACK_NOTE}")
    if table.any_transductive:
        notes.append(f"§ {TRANSDUCTIVE_NOTE}")
    if table.any_unknown_params:
        notes.append(UNKNOWN_PARAMS_NOTE)
    if table.rank is not None:
        flagged = (", or a † / ‡ / § cell," if table.any_oracle or table.any_fallback or table.any_transductive
                   else "")
        notes.append("rank: by the head's mean over the columns" + (" (without Average)" if AVERAGE in
                     list(table.mean.columns) else "") + f"; 1 = best; heads with a missing cell{flagged} are unranked.")
    notes += table.notes
    return notes


def _params_header(table: Table) -> list[str]:
    return [PARAMS_HEADER] if table.params is not None else []


def _params_cell(table: Table, i: int) -> list[str]:
    """Row ``i``'s "Trainable params" cell (0, 8.2K, 1.0M; a range low–high; ? unknown; — no cell), if any."""
    if table.params is None:
        return []
    low, high = table.params["low"].iat[i], table.params["high"].iat[i]
    if low != low and not table.params["unknown"].iat[i]:
        return [MISSING]
    return [format_count_range(low, high)]


def _render_markdown(table: Table, decimals: int) -> str:
    seeds = table.uniform_seeds()
    best = _best_mask(table, decimals)
    first = ([table.block_dim] if table.block_dim else []) + [table.rows]
    header = first + _params_header(table) + (["rank"] if table.rank is not None else []) + [
        _dim_label(table.cols, c) for c in table.mean.columns]
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |",
             "|" + "|".join([":---"] * len(first) + ["---:"] * (len(header) - len(first))) + "|"]
    for i, block, row in _row_keys(table):
        cells = ([_md_escape(_dim_label(table.block_dim, block))] if table.block_dim else [])
        cells.append(_md_escape(_dim_label(table.rows, row)))
        cells += _params_cell(table, i)
        if table.rank is not None:
            rk = table.rank.iat[i]
            cells.append(MISSING if rk != rk else str(int(rk)))
        for j in range(table.mean.shape[1]):
            parts = _cell_parts(table, i, j, decimals, seeds is None)
            cells.append(_format_cell(parts, bool(best.iat[i, j]), "markdown"))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    notes = [_md_escape(n) for n in _footnotes(table, seeds)]
    lines += [f"{note}  " if k < len(notes) - 1 else note for k, note in enumerate(notes)]
    return "\n".join(lines) + "\n"


def _render_latex(table: Table, decimals: int, standalone: bool) -> str:
    seeds = table.uniform_seeds()
    best = _best_mask(table, decimals)
    has_rank = table.rank is not None
    as_column = bool(table.block_dim and table.block_column)  # the base-to-new layout: as in Markdown and CSV
    n_params = len(_params_header(table))
    n_lead = 1 + (1 if has_rank else 0) + (1 if as_column else 0) + n_params
    ncols = table.mean.shape[1]
    spec = "l" * (1 + as_column) + "r" * n_params + ("r" if has_rank else "") + "r" * ncols
    header = ([latex_escape(table.block_dim.capitalize())] if as_column else []) + [
        latex_escape(table.rows.capitalize())] + _params_header(table) + (["Rank"] if has_rank else []) + [
        latex_escape(_dim_label(table.cols, c)) for c in table.mean.columns]
    out = []
    if standalone:
        out += list(_LATEX_PREAMBLE)
    else:
        out.append(r"% requires \usepackage{booktabs}")
    out += [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
            " & ".join(header) + r" \\", r"\midrule"]
    prev_block = object()
    for i, block, row in _row_keys(table):
        if as_column and block != prev_block:
            if i > 0:
                out.append(r"\midrule")
            prev_block = block
        elif table.block_dim and block != prev_block:
            if i > 0:
                out.append(r"\midrule")
            title = latex_escape(_block_title(table, block))
            out.append(rf"\multicolumn{{{n_lead + ncols}}}{{l}}{{\emph{{{title}}}}} \\")
            prev_block = block
        elif not table.block_dim and row == AVERAGE and i > 0:
            out.append(r"\midrule")
        elif table.block_dim and row == AVERAGE:
            out.append(r"\cmidrule(lr){1-%d}" % (n_lead + ncols))
        cells = [latex_escape(_dim_label(table.block_dim, block))] if as_column else []
        cells.append(latex_escape(_dim_label(table.rows, row)))
        cells += [c.replace("–", "--") for c in _params_cell(table, i)]
        if has_rank:
            rk = table.rank.iat[i]
            cells.append("---" if rk != rk else str(int(rk)))
        for j in range(ncols):
            cells.append(_format_cell(_cell_parts(table, i, j, decimals, seeds is None), bool(best.iat[i, j]), "latex"))
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    notes = _footnotes(table, seeds)
    caption = latex_escape(notes[0]).replace("±", r"$\pm$")
    rest = []
    marks = {"† ": r"$^\dagger$ ", "‡ ": r"$^\ddagger$ "}
    for note in notes[1:]:
        mark = marks.get(note[:2], "")
        text = latex_escape(note[2:] if mark else note).replace("†", r"$^\dagger$").replace("‡", r"$^\ddagger$")
        text = text.replace("Δ", r"$\Delta$")
        rest.append(mark + text)
    if rest:
        out.append(r"\par\smallskip{\footnotesize " + r" \\ ".join(rest) + "}")
    out += [rf"\caption{{{caption}}}", r"\end{table}"]
    if standalone:
        out.append(r"\end{document}")
    return "\n".join(out) + "\n"


__all__ = ["render", "render_groups", "latex_escape", "check_decimals"]
