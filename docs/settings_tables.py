"""Regenerate the settings tables of docs/methods.md from the config classes: python docs/settings_tables.py"""

from pathlib import Path

from bayescompress import methods
from bayescompress.compress import PipelineConfig
from bayescompress.settings import describe, show

PAGE = Path(__file__).with_name("methods.md")
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def tables() -> str:
    lines = []
    for name in methods.names():
        method = methods.get(name)
        cnn = method.presets.get("cnn", {})
        lines += [f"### `{name}` (`{method.config_class.__name__}`)", "",
                  "| setting | default (MLP) | CNN preset | allowed | meaning |", "|---|---|---|---|---|"]
        for info in describe(method.config_class):
            preset = show(cnn[info.name]) if cnn.get(info.name, info.default) != info.default else ""
            meaning = info.help.replace("|", "\\|")
            lines.append(f"| `{info.name}` | {show(info.default)} | {preset} | {info.allowed.describe()} | {meaning} |")
        lines.append("")
    lines += ["### Pipeline (`PipelineConfig`, every method)", "", "| setting | default | allowed | meaning |",
              "|---|---|---|---|"]
    lines += [f"| `{i.name}` | {show(i.default)} | {i.allowed.describe()} | {i.help} |" for i in describe(PipelineConfig)]
    lines.append('| `device` | cpu | "cpu", "cuda" or "cuda:N", checked on construction | where to run |')
    return "\n".join(lines)


if __name__ == "__main__":
    text = PAGE.read_text()
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    PAGE.write_text(f"{head}{BEGIN}\n{tables()}\n{END}{tail}")
    print(f"rewrote the settings tables of {PAGE}")
