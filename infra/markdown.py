"""The one markdown table writer of bench.py, tools/, results/ and the generated docs tables."""


def table(head, rows, labels=None):
    """A markdown table of head (column names) and rows (lists of cell strings), as lines joined by newlines. With
    labels=k the columns are padded to one width, the first k left-aligned and the rest (numbers) right-aligned, so
    the table also reads as plain text in a terminal; an empty cell is one space."""
    rows = [[str(c) for c in row] for row in rows]
    if labels is None:
        def line(cells):
            return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"
        rule = "|" + "---|" * len(head)
    else:
        widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]

        def line(cells):
            return "| " + " | ".join(c.ljust(w) if i < labels else c.rjust(w)
                                     for i, (c, w) in enumerate(zip(cells, widths))) + " |"
        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), rule, *map(line, rows)])
