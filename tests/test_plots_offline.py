"""`dvc plots show` writes a page that draws without network: vega inlined through
.dvc/config's plots.html_template (scripts/vega_offline.py), the versions DVC's own page uses."""
from __future__ import annotations

import re
import subprocess
import sys

from repo_copy import ROOT, env_for, make_repo

from scripts import vega_offline


def test_template_inlines_the_vega_dvc_would_load():
    page = vega_offline.TEMPLATE.read_text(encoding="utf-8")
    label = re.search(r"<!-- (\S+@\S+ \S+@\S+ \S+@\S+) \(BSD", page).group(1)
    wanted = " ".join(f"{p}@{v}" for p, v in vega_offline.dvc_versions().items())
    assert label == wanted, "DVC was upgraded: rerun python scripts/vega_offline.py"
    assert "{plot_divs}" in page and "{refresh_tag}" in page
    assert "{scripts}" not in page, "DVC would add its CDN <script> tags there"
    assert not re.search(r"<script[^>]+src=", page), "every script is inline"
    assert page.count("<script>") == 3 and '<meta charset="utf-8">' in page


def test_config_points_dvc_at_the_template():
    out = subprocess.run([sys.executable, "-m", "dvc", "config", "plots.html_template"],
                         cwd=ROOT, capture_output=True, text=True, env=env_for(), check=True)
    assert (ROOT / ".dvc" / out.stdout.strip()).resolve() == vega_offline.TEMPLATE.resolve()


def test_dvc_plots_show_writes_a_page_without_network_references(tmp_path):
    """In a clone-like copy, on the committed curves (no pipeline run)."""
    repo = make_repo(tmp_path / "repo", {})
    out = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "-o", "out",
                          "valid_elbo", "metrics/curves/vae.csv"], cwd=repo,
                         capture_output=True, text=True, env=env_for(), timeout=300)
    assert out.returncode == 0, out.stderr
    page = (repo / "out" / "index.html").read_text(encoding="utf-8")
    assert "vegaEmbed('#valid_elbo'" in page and "vegaEmbed('#metrics_curves_vae_csv'" in page
    assert "cdn.jsdelivr" not in page and not re.search(r"<script[^>]+src=", page)
    template = vega_offline.TEMPLATE.read_text(encoding="utf-8")
    bundles = re.findall(r"<script>(.{200})", template)
    assert len(bundles) == 3 and all(b in page for b in bundles), "the page holds the bundles"
