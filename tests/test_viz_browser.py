"""bertviz's attention pages in a real headless browser.

The pages `scratchformer viz attention` writes load require.js, d3 and
jQuery from a CDN that test machines cannot reach. The test installs those
libraries from the npm registry into a cache directory at test time (the
same versions bertviz names, or the nearest the registry has: jQuery 2.0.0
is not there, 2.1.0 is) and serves them by intercepting the browser's
requests; every other network request is refused. Nothing third-party is
committed.

Needs Debian's chromium (/usr/bin/chromium, or $SCRATCHFORMER_CHROMIUM),
Playwright (the `test` extra) and npm; skips, saying which is missing,
otherwise. `.ci/run` installs chromium, so CI runs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

pytest.importorskip("bertviz", reason="bertviz (the `viz` extra) is not installed")

from scratchformer.models import GPT, EncoderDecoder, EncoderDecoderConfig, GPTConfig  # noqa: E402
from scratchformer.viz.attention import attention_maps, write_bertviz_html  # noqa: E402

CHROMIUM = os.environ.get("SCRATCHFORMER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
#: npm package@version -> (file inside the package, the request path ending it answers)
JS_LIBRARIES = {
    "requirejs@2.3.6": ("require.js", "/require.min.js"),
    "d3@5.7.0": ("dist/d3.min.js", "/d3.min.js"),
    "jquery@2.1.0": ("dist/jquery.min.js", "/jquery.min.js"),  # bertviz names 2.0.0, which npm does not have
}
NPM_CACHE = Path(os.environ.get("SCRATCHFORMER_NPM_CACHE", Path.home() / ".cache" / "scratchformer" / "bertviz-js"))


def _browser_or_skip() -> str:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's `chromium` package (apt-get install chromium) "
                    "or set $SCRATCHFORMER_CHROMIUM")
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install 'scratchformer[test]'")
    return CHROMIUM


def _js_libraries() -> dict[str, bytes]:
    """Request path ending -> file contents, from npm packages installed once into NPM_CACHE."""
    wanted = {spec: NPM_CACHE / "node_modules" / spec.rsplit("@", 1)[0] / path for spec, (path, _) in JS_LIBRARIES.items()}
    if not all(f.is_file() for f in wanted.values()):
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed; it fetches require.js, d3 and jQuery for bertviz's pages")
        NPM_CACHE.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--no-save", "--prefix", str(NPM_CACHE),
                               *JS_LIBRARIES], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            pytest.skip(f"npm could not install {list(JS_LIBRARIES)}: {proc.stderr.strip()[-300:]}")
    return {ending: wanted[spec].read_bytes() for spec, (_, ending) in JS_LIBRARIES.items()}


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    executable = _browser_or_skip()
    libraries = _js_libraries()
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")  # a fresh --user-data-dir
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            user_data_dir=str(profile), executable_path=executable, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield context, libraries
        finally:
            context.close()


def _open(browser_and_libs, page_path: Path):
    """Open page_path with the CDN served locally; return (page, JS errors, refused requests)."""
    context, libraries = browser_and_libs
    page = context.new_page()
    errors, refused = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    def handle(route):
        url = route.request.url
        if url.startswith("file:"):
            return route.continue_()
        for ending, body in libraries.items():
            if url.split("?")[0].endswith(ending):
                return route.fulfill(status=200, body=body, content_type="application/javascript")
        refused.append(url)
        return route.abort()

    page.route("**/*", handle)
    page.goto(page_path.as_uri())
    return page, errors, refused


def _pages(tmp_path: Path, maps, tokens, decoder_tokens=None) -> dict[str, Path]:
    paths = write_bertviz_html(maps, tokens, tmp_path, decoder_tokens)
    return {p.stem.removeprefix("attention_"): p for p in paths}


def _gpt_pages(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, d_model=32, n_head=4, n_layer=3, max_len=16))
    ids = torch.tensor([[1, 5, 7, 2, 9, 4]])
    return _pages(tmp_path, attention_maps(model, ids), [f"t{i}" for i in ids[0].tolist()])


def test_head_view_draws_every_layer_and_head(browser, tmp_path):
    page, errors, refused = _open(browser, _gpt_pages(tmp_path)["head_view"])
    page.wait_for_selector("g.headAttention", state="attached", timeout=20_000)
    assert page.locator("#layer option").count() == 3  # one entry per layer
    assert page.locator("g.headAttention").count() == 4  # one group of arcs per head
    assert page.locator("g.tokenAttention").count() == 4 * 6  # per head, one per query token
    assert not errors, errors
    assert not refused, refused


def test_model_view_draws_a_thumbnail_per_layer_and_head(browser, tmp_path):
    page, errors, refused = _open(browser, _gpt_pages(tmp_path)["model_view"])
    page.wait_for_selector("rect.attn_background", state="attached", timeout=20_000)
    assert page.locator("rect.attn_background").count() == 3 * 4
    for layer in range(3):
        for head in range(4):
            assert page.locator(f"#attn_background_{layer}_{head}").count() == 1
    assert not errors, errors
    assert not refused, refused


def test_encoder_decoder_pages_offer_the_three_attention_kinds(browser, tmp_path):
    torch.manual_seed(0)
    model = EncoderDecoder(EncoderDecoderConfig(src_vocab_size=20, tgt_vocab_size=20, d_model=32, n_head=2,
                                                n_layer=2, max_len=16))
    src, dec = torch.tensor([[3, 4, 5, 6, 7]]), torch.tensor([[20, 8, 9]])
    maps = attention_maps(model, src, dec)
    pages = _pages(tmp_path, maps, ["a", "b", "c", "d", "e"], ["<start>", "x", "y"])
    page, errors, refused = _open(browser, pages["head_view"])
    page.wait_for_selector("g.headAttention", state="attached", timeout=20_000)
    options = page.locator("#filter option").all_inner_texts()
    assert options == ["Encoder", "Decoder", "Cross"]
    assert page.locator("#layer option").count() == 2
    assert page.locator("g.headAttention").count() == 2
    page.select_option("#filter", "2")  # cross-attention: 3 decoder queries against 5 source keys
    page.wait_for_timeout(300)
    assert page.locator("g.tokenAttention").count() == 2 * 3
    page, errors2, refused2 = _open(browser, pages["model_view"])
    page.wait_for_selector("rect.attn_background", state="attached", timeout=20_000)
    assert page.locator("rect.attn_background").count() == 2 * 2
    assert not errors + errors2, errors + errors2
    assert not refused + refused2, refused + refused2
