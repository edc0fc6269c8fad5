"""What the dashboard's browser tests share: signing in, and the checks every page must
pass at a desktop's and at a phone's width. Screenshots land in test-artifacts/
(git-ignored) for a human to look at; the assertions are on the DOM."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import httpx
from playwright.sync_api import Page

from tests.fixtures.live_stack import LiveStack

ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts"
# A desktop and a phone.
WIDTHS = {"desktop": 1400, "phone": 390}


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("chromium is not installed: run `make setup` (scripts/ensure_chromium.sh)")


def sign_in(page: Page, stack: LiveStack, key: str | None = None, *, wait: bool = True) -> None:
    """Signs in with `key` (the stack's tenant's by default); `wait`: until the nav shows."""
    page.goto(f"{stack.url}/ui/")
    page.fill("#api-key", key or stack.api_key)
    page.click("#signin-form button[type=submit]")
    if wait:
        page.locator("#nav").wait_for()


# Elements whose content spills out of their own box (not a scroll container's, whose
# overflow is scrolled), and whether the page is wider than the window.
_OVERFLOW = """() => {
  const out = [];
  const doc = document.documentElement;
  if (doc.scrollWidth > window.innerWidth + 1) out.push(`page: ${doc.scrollWidth}px wide`);
  for (const node of document.querySelectorAll("main *, header *")) {
    if (node.closest("svg") || node.offsetParent === null) continue;
    const style = getComputedStyle(node);
    if (/(auto|scroll|hidden)/.test(style.overflowX)) continue;
    if (node.closest(".scroll")) continue;
    if (node.scrollWidth > node.clientWidth + 1 && node.clientWidth > 0) {
      const what = `${node.tagName.toLowerCase()}${node.id ? "#" + node.id : ""}`;
      const text = node.textContent.slice(0, 40);
      out.push(`${what} (${node.scrollWidth} > ${node.clientWidth}): ${text}`);
    }
    const box = node.getBoundingClientRect();
    if (box.right > window.innerWidth + 1) {
      out.push(`${node.tagName.toLowerCase()} ends at ${box.right}px`);
    }
  }
  return out;
}"""

# Text nodes that print a missing value as JavaScript spells it.
_STRAY = """() => {
  const out = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const missing = /(^|\\W)(null|undefined|NaN|\\[object Object\\])(\\W|$)/;
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (missing.test(n.textContent)) out.push(n.textContent.slice(0, 80));
  }
  return out;
}"""


def check_layout(page: Page, name: str, ready: str = "#view h1") -> None:
    """At a desktop's and a phone's width: a screenshot of the whole page, nothing spilling
    out of its box or past the window, no text reading null/undefined. `ready`: a selector
    that shows the page has drawn; the page is left at the desktop width."""
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        for label, width in WIDTHS.items():
            page.set_viewport_size({"width": width, "height": 900})
            page.locator(ready).first.wait_for()
            page.wait_for_timeout(150)  # a relayout after the resize
            page.screenshot(path=str(ARTIFACTS / f"ui-{name}-{label}.png"), full_page=True)
            overflow = page.evaluate(_OVERFLOW)
            assert overflow == [], f"{name} at {width}px: {overflow}"
            stray = page.evaluate(_STRAY)
            assert stray == [], f"{name} at {width}px: text nodes {stray}"
    finally:
        page.set_viewport_size({"width": WIDTHS["desktop"], "height": 1000})


def new_tenant(stack: LiveStack, prefix: str) -> tuple[str, str]:
    """A tenant of the test's own on a shared stack, whose files, jobs and models lists
    start empty: its name and API key."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    r = httpx.post(
        f"{stack.url}/v1/admin/tenants",
        json={"name": name},
        headers={"Authorization": f"Bearer {stack.admin_key}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return name, str(r.json()["api_key"])
