"""Write `.dvc/plots/offline.html`: DVC's plots page template with Vega, Vega-Lite and Vega-Embed inlined, so
`dvc plots show` draws its charts on a machine without internet (DVC's own template loads them from a CDN).

The scripts come from vl-convert-python's bundle (`vl_convert.javascript_bundle`: the npm packages' builds, which
set `window.vega`, `window.vegaLite` and `window.vegaEmbed`); their licences are in `.dvc/plots/LICENSES.md`.
`.dvc/config` points DVC at the template (`plots.html_template`, relative to `.dvc/`). Regenerate after a DVC
upgrade that changes the Vega-Lite major version of its specs:

    .venv/bin/pip install vl-convert-python && .venv/bin/python tools/vendor_vega.py
"""

from __future__ import annotations

from pathlib import Path

import vl_convert as vlc

VEGA_LITE = "5.20"  # dvc-render writes Vega-Lite v5 specs
OUT = Path(__file__).resolve().parents[1] / ".dvc" / "plots" / "offline.html"

PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- {versions}, inlined from vl-convert-python {vlc} (licences: LICENSES.md beside this template) -->
    <script type="text/javascript">
{bundle}
    </script>
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def main() -> None:
    bundle = vlc.javascript_bundle(vl_version=VEGA_LITE)
    if "</script" in bundle.lower() or "{plot_divs}" in bundle:
        raise SystemExit("the bundle contains text that would end the inline script or fill DVC's placeholder")
    versions = (f"vega {vlc.get_vega_version()}, vega-lite {VEGA_LITE}, vega-embed {vlc.get_vega_embed_version()}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(PAGE.format(versions=versions, vlc=vlc.__version__, bundle=bundle))
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.1f} MB; {versions})")


if __name__ == "__main__":
    main()
