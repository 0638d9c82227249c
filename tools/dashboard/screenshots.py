"""Screenshots of a running dashboard's main pages, for docs/ (Debian's chromium, driven by Playwright).

    python -m tools.dashboard.screenshots http://127.0.0.1:8765 EXPERIMENT [--candidate ID]
        [--compare OTHER ...] [--report archloop-runs/EXPERIMENT/report.html] [--out docs/img]

Writes dashboard-experiment.png, dashboard-candidates.png and dashboard-candidate.png (the given
candidate, else the experiment's first admitted one); with --compare, dashboard-compare.png (the
experiment beside the others); with --report, report.png: that static report opened from disk with
the network cut, as a reader would. Exit 2 when chromium is missing or a page does not answer 200.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

CHROMIUM_ARGS = [  # what a closed network and root need (docs/dashboard.md#tests)
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url")
    parser.add_argument("experiment")
    parser.add_argument("--candidate", default="")
    parser.add_argument("--compare", nargs="*", default=[], help="experiments to compare it with")
    parser.add_argument("--report", type=Path, help="a static report.html (`archloop report`)")
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium")
    if chromium is None:
        print("screenshots: no chromium on PATH (apt-get install chromium)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    base = args.base_url.rstrip("/")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        experiment = f"{base}/experiments/{args.experiment}"
        shots = [  # (url, file, what to wait for, whole page: the candidate list shows its first screen)
            (experiment, "dashboard-experiment.png", "#plot-valid .main-svg", True),
            (f"{experiment}/candidates", "dashboard-candidates.png", "#candidates", False),
        ]
        for url, name, ready, full in shots:
            response = page.goto(url)
            if response is None or response.status != 200:
                print(f"screenshots: {url} answered {response and response.status}", file=sys.stderr)
                return 2
            page.wait_for_selector(ready)
            page.screenshot(path=str(args.out / name), full_page=full)
        candidate = args.candidate
        if not candidate:
            page.goto(f"{base}/experiments/{args.experiment}/candidates?decision=admitted")
            candidate = page.locator("#candidates tbody a").first.inner_text()
        response = page.goto(f"{base}/candidates/{candidate}")
        if response is None or response.status != 200:
            status = response and response.status
            print(f"screenshots: candidate {candidate} answered {status}", file=sys.stderr)
            return 2
        page.screenshot(path=str(args.out / "dashboard-candidate.png"), full_page=True)
        if args.compare:
            query = "&".join(f"experiment={name}" for name in (args.experiment, *args.compare))
            response = page.goto(f"{base}/compare?{query}")
            if response is None or response.status != 200:
                print(f"screenshots: the comparison answered {response and response.status}", file=sys.stderr)
                return 2
            page.wait_for_selector("#plot-compare-dynamics .main-svg")
            page.screenshot(path=str(args.out / "dashboard-compare.png"), full_page=True)
        if args.report:
            offline = browser.new_context(offline=True, viewport={"width": 1360, "height": 900})
            offline.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file:") else r.abort())
            report = offline.new_page()
            report.goto(args.report.resolve().as_uri())
            report.wait_for_selector("#plot-proxy .main-svg, #plot-proxy .plot-empty")
            report.screenshot(path=str(args.out / "report.png"), full_page=True)
        browser.close()
    print(f"screenshots of {args.experiment} (candidate {candidate}) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
