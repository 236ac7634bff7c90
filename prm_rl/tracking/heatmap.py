"""A response drawn with each token coloured by its implicit reward, as HTML (W&B, browsers) and PNG (docs).

Green = the PRM raised that token's likelihood over the reference (positive reward), red = lowered it;
colour strength is relative to the largest |reward| in the response. At the end of each step its step
reward (q_k - q_{k-1}) is printed; the first wrong step, when known, is boxed.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TokenHeatmap:
    """What one rendered response needs: token texts, their rewards and the step ends."""

    title: str  # e.g. the prompt, outcome score and PRM score
    tokens: list[str]  # decoded text of each response token
    rewards: list[float]  # reward of each token (beta * log-ratio)
    step_ends: list[int] = field(default_factory=list)  # index of the last token of each step
    step_rewards: list[float] = field(default_factory=list)  # reward of each step, same order
    first_wrong: int = 0  # 1-based first wrong step (0: none, or unknown)

    def steps(self) -> list[tuple[range, float]]:
        """(token positions, step reward) of each step, in order."""
        out, start = [], 0
        for end, reward in zip(self.step_ends, self.step_rewards):
            out.append((range(start, end + 1), reward))
            start = end + 1
        return out


def of_response(title: str, tokens: list[str], rewards, step_end, first_wrong: int = 0) -> TokenHeatmap:
    """One response's heatmap: ``rewards`` [T] float tensor (each token's reward), ``step_end`` [T] bool tensor (the
    tokens that close a step; the last token closes one too), each step's reward the sum of its tokens'
    (:func:`prm_rl.core.step_rewards`)."""
    import torch

    from prm_rl import core

    step_r, step_valid, end_pos = core.step_rewards(rewards[None], torch.ones_like(rewards[None]), step_end[None],
                                                    beta=1.0)
    n = int(step_valid.sum())
    return TokenHeatmap(title=title, tokens=tokens, rewards=rewards.tolist(), step_ends=end_pos[0, :n].tolist(),
                        step_rewards=step_r[0, :n].tolist(), first_wrong=first_wrong)


def _rgb(value: float, scale: float) -> tuple[float, float, float]:
    """White for 0, towards green for positive and red for negative, saturating at ``scale``."""
    a = max(-1.0, min(1.0, value / scale)) if scale > 0 else 0.0
    fade = 1.0 - abs(a) * 0.75
    return (1.0, fade, fade) if a < 0 else (fade, 1.0, fade)


def _scale(values: list[float]) -> float:
    return max((abs(v) for v in values), default=0.0)


def _shown(token: str) -> str:
    return token.replace("\n", "\u21b5")  # a visible newline mark, the line still breaks after it


def to_html(heatmap: TokenHeatmap) -> str:
    """A self-contained HTML fragment (inline styles only), one line per step."""
    scale = _scale(heatmap.rewards)
    parts = [f'<div style="font-family:monospace;margin:8px 0"><div style="font-weight:bold">'
             f'{html.escape(heatmap.title)}</div>']
    for k, (positions, step_reward) in enumerate(heatmap.steps(), start=1):
        boxed = "border:2px solid #c00;" if k == heatmap.first_wrong else "border:2px solid transparent;"
        parts.append(f'<div style="{boxed}display:inline-block;padding:1px">')
        for i in positions:
            r, g, b = _rgb(heatmap.rewards[i], scale)
            color = f"rgb({int(r * 255)},{int(g * 255)},{int(b * 255)})"
            parts.append(f'<span title="{heatmap.rewards[i]:+.4f}" style="background:{color}">'
                         f"{html.escape(_shown(heatmap.tokens[i]))}</span>")
        parts.append(f'</div> <span style="color:#555">step {k}: {step_reward:+.4f}'
                     f'{" (first wrong step)" if k == heatmap.first_wrong else ""}</span><br>')
    parts.append("</div>")
    return "".join(parts)


def table(shown: list[tuple[dict, TokenHeatmap | None]]) -> tuple[list[str], list[list]]:
    """Columns and rows of a W&B table of (fields, heatmap) pairs: the fields, then a ``heatmap`` column of
    HTML ("" where a row has none)."""
    columns = [*shown[0][0], "heatmap"] if shown else ["heatmap"]
    return columns, [[*fields.values(), "" if h is None else to_html(h)] for fields, h in shown]


def to_page(heatmaps: list[TokenHeatmap]) -> str:
    """A whole HTML document of several responses."""
    return "<html><body>" + "".join(to_html(h) for h in heatmaps) + "</body></html>\n"


def to_png(heatmaps: list[TokenHeatmap], path: Path) -> Path:
    """Draw the responses one under another into ``path`` (matplotlib, no screen needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = sum(1 + len(h.steps()) for h in heatmaps) + len(heatmaps)
    width = max((sum(len(_shown(h.tokens[i])) for i in pos) for h in heatmaps for pos, _ in h.steps()),
                default=10)
    fig_w, fig_h = 0.16 * width + 4.5, 0.32 * lines + 0.4
    fig = plt.figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, fig_w / 0.16)
    ax.set_ylim(lines + 0.5, -0.5)
    ax.axis("off")
    row = 0
    for h in heatmaps:
        ax.text(0.5, row, h.title, fontsize=9, fontweight="bold", va="center", family="monospace")
        row += 1
        scale = _scale(h.rewards)
        for k, (positions, step_reward) in enumerate(h.steps(), start=1):
            x = 1.0
            for i in positions:
                text = _shown(h.tokens[i])
                ax.add_patch(plt.Rectangle((x, row - 0.42), len(text), 0.84, color=_rgb(h.rewards[i], scale)))
                ax.text(x + len(text) / 2, row, text, fontsize=10, ha="center", va="center", family="monospace")
                x += len(text)
            if k == h.first_wrong:
                ax.add_patch(plt.Rectangle((0.8, row - 0.48), x - 0.6, 0.96, fill=False, edgecolor="#c00", lw=1.5))
            note = f"step {k}: {step_reward:+.3f}" + ("   <- first wrong step" if k == h.first_wrong else "")
            ax.text(x + 1.5, row, note, fontsize=8, va="center", family="monospace", color="#444")
            row += 1
        row += 1
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
