"""Drives the tenant console in headless Chromium (Playwright, the system's
Chromium): wrong key, sign-in, a job that runs, one that waits and why, a
422 shown as a message, cancelling, statements downloaded, the use-over-time
charts, an expired session, and the first paint with 1,000 jobs.

Run by tests/console_browser.rs, which starts the API and the tenants;
prints one JSON line of figures. Screenshots go to --out.
"""

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from playwright.sync_api import expect, sync_playwright


def http(base, method, path, key, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + key)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--key-id", required=True)
    ap.add_argument("--load-key", required=True)
    ap.add_argument("--admin", required=True)
    ap.add_argument("--chromium", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    figures = {}
    expect.set_options(timeout=20_000)

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=a.chromium, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        ctx = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 1100})
        page = ctx.new_page()
        page.goto(a.base + "/console")

        # A wrong key is a message, not a blank page.
        page.fill("#key", "zk_not_a_key")
        page.click("#signin-form button[type=submit]")
        expect(page.locator("#message")).to_contain_text("The key was refused")
        expect(page.locator("#signin")).to_be_visible()
        page.screenshot(path=str(out / "1-wrong-key.png"), full_page=True)

        # Sign in: the key is in this tab's sessionStorage, in no cookie.
        page.fill("#key", a.key)
        page.click("#signin-form button[type=submit]")
        expect(page.locator("#tenant")).to_contain_text("acme")
        expect(page.locator("#quota")).to_contain_text("GPUs held")
        expect(page.locator("#quota")).to_contain_text("GPU-hours of V100M32")
        assert page.evaluate("sessionStorage.getItem('zhisuan.console.key')") == a.key
        assert ctx.cookies() == [], ctx.cookies()

        # A job that runs, and where it went.
        form = "#submit-form"
        page.fill(f"{form} [name=name]", "train-a")
        page.fill(f"{form} [name=image]", "registry/trainer:1")
        page.click(f"{form} button[type=submit]")
        row = page.locator("#jobs tr[data-job='train-a']")
        expect(row).to_have_attribute("data-phase", "running")
        placement = row.locator("td").nth(4).inner_text()
        assert "/" in placement, placement

        # One that waits, and why: its only model's monthly GPU-hours are used up.
        page.fill(f"{form} [name=name]", "wait-v100")
        page.fill(f"{form} [name=gpu_models]", "V100M32")
        page.click(f"{form} button[type=submit]")
        row = page.locator("#jobs tr[data-job='wait-v100']")
        expect(row).to_have_attribute("data-phase", "pending")
        why = row.locator("td").nth(5)
        expect(why).to_contain_text("GPU-hours")
        assert why.get_attribute("title"), "a cut reason keeps its whole text in the tooltip"
        page.screenshot(path=str(out / "2-jobs.png"), full_page=True)

        # A 422 names the field, next to the form.
        page.fill(f"{form} [name=gpu_models]", "")
        page.fill(f"{form} [name=name]", "Bad_Name")
        page.click(f"{form} button[type=submit]")
        expect(page.locator("#submit-error")).to_contain_text("422")
        expect(page.locator("#submit-error")).to_contain_text("(name)")
        expect(page.locator(f"{form} [name=name]")).to_have_class("invalid")
        page.screenshot(path=str(out / "3-invalid.png"), full_page=True)

        # Cancel the waiting one.
        page.locator("#jobs tr[data-job='wait-v100'] button.cancel").click()
        expect(page.locator("#jobs tr[data-job='wait-v100']")).to_have_attribute("data-phase", "cancelled")

        # Statements: CSV and JSON downloaded with the tab's key.
        with page.expect_download() as d:
            page.click("#download-csv")
        csv = Path(d.value.path()).read_text()
        assert csv.count("\n") >= 1 and "," in csv, csv[:200]
        with page.expect_download() as d:
            page.click("#statement-form button[type=submit]")
        statement = json.loads(Path(d.value.path()).read_text())
        assert statement["tenant"] == "acme", statement
        expect(page.locator("#statement")).to_contain_text("Payable")

        # Use over time: a bar per day, drawn from /v1/usage/series.
        expect(page.locator("body")).to_have_attribute("data-series", "30")
        assert page.locator("#chart-gpu rect.bar").count() == 30
        drawn = "id => [...document.querySelectorAll(`#${id} rect.bar`)].filter(r => +r.getAttribute('height') > 0).length"
        assert page.evaluate(drawn, "chart-gpu") >= 1, "the metered GPU time is not drawn"
        assert page.evaluate(drawn, "chart-spend") >= 1, "its charges are not drawn"
        expect(page.locator("#chart-gpu .peak")).to_contain_text(" h")
        page.select_option("#bucket", "hour")
        expect(page.locator("body")).to_have_attribute("data-series", "48")
        page.screenshot(path=str(out / "4-signed-in.png"), full_page=True)

        # The key is revoked: the next refresh signs the tab out, saying why.
        st, _ = http(a.base, "DELETE", f"/v1/tenants/acme/keys/{a.key_id}", a.admin)
        assert st in (200, 204), st
        expect(page.locator("#signin")).to_be_visible()
        expect(page.locator("#message")).to_contain_text("revoked")
        assert page.evaluate("sessionStorage.getItem('zhisuan.console.key')") is None
        page.screenshot(path=str(out / "5-revoked.png"), full_page=True)

        # The operator page: tenants' series only with a key; with the admin
        # key, use and spend over time split by region and tenant.
        op = ctx.new_page()
        op.goto(a.base + "/")
        expect(op.locator("body")).to_have_attribute("data-rendered", "true")
        expect(op.locator("#chart-tenant-spend")).to_contain_text("sign in above")
        expect(op.locator("#over-time-hint")).to_be_visible()
        # Regions are for anyone: GPUs allocated of installed, from the
        # scheduler, as integers.
        assert op.evaluate(drawn, "chart-region-gpus") >= 1, "no region's GPUs drawn"
        expect(op.locator("#chart-region-gpus")).to_contain_text(" GPUs")
        op.fill("#page-key", a.admin)
        op.click("#key-form button[type=submit]")
        # This month's totals from the ledger (/v1/overview): acme's metered
        # hours are charged and their carbon is guian's.
        expect(op.locator("body")).to_have_attribute("data-tenants", "1")
        expect(op.locator("#chart-tenant-spend")).to_contain_text("acme")
        expect(op.locator("#chart-tenant-spend")).to_contain_text("¥")
        expect(op.locator("#chart-region-carbon")).to_contain_text("guian")
        expect(op.locator("body")).to_have_attribute("data-series", "2")  # guian; acme (the one billed)
        for chart in ["chart-series-region", "chart-series-tenant", "chart-series-carbon", "chart-series-pending"]:
            assert op.evaluate(drawn, chart) >= 1, f"{chart} draws nothing"
        expect(op.locator("#legend-tenant")).to_contain_text("acme")
        # Pending over time: each hour's peak of the controller's samples.
        expect(op.locator("body")).to_have_attribute("data-pending-peak", "4")
        expect(op.locator("#legend-pending")).to_contain_text("QuotaExceeded ≤ 3")
        expect(op.locator("#legend-pending")).to_contain_text("Unschedulable ≤ 1")
        # Why pending: every tenant's waiting job with its reason, cut with
        # its whole text in the tooltip.
        stuck = op.locator("#pending tr[data-tenant='slow']")
        expect(stuck).to_contain_text("stuck")
        expect(stuck.locator("td").nth(4)).to_contain_text("GPU-hours")
        assert stuck.locator("td").nth(4).get_attribute("title"), "no tooltip on the reason"
        op.screenshot(path=str(out / "7-operator-page.png"), full_page=True)

        # First paint with 1,000 jobs: from navigation to the first page of
        # the jobs table drawn (the key already in the tab).
        load = ctx.new_page()
        load.goto(a.base + "/console")
        load.evaluate("k => sessionStorage.setItem('zhisuan.console.key', k)", a.load_key)
        paints = []
        for _ in range(3):
            t0 = time.perf_counter()
            load.reload()
            load.wait_for_selector("body[data-jobs='100']")
            paints.append((time.perf_counter() - t0) * 1000)
        figures["first_paint_ms_1000_jobs"] = round(sorted(paints)[1], 1)
        figures["first_paint_ms_runs"] = [round(x, 1) for x in paints]
        assert load.locator("#more-jobs").is_visible()
        load.screenshot(path=str(out / "6-1000-jobs.png"))
        browser.close()
    print(json.dumps(figures))


if __name__ == "__main__":
    sys.exit(main())
