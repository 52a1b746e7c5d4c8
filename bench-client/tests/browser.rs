//! The report page in a real browser: `bench-client report` makes index.html from the committed
//! digits results, and headless Chromium (Debian's package, which scripts/test.sh installs)
//! loads it at a laptop's width and at a phone's. The page must load without a script error, a
//! failed resource or any request outside the page, decode every embedded plot, show the table
//! and a coloured heatmap cell for every class, model and attack, keep everything but the
//! scrolling tables within the screen's width, and make a non-blank screenshot.
//!
//! The sections on where the robustness goes (uncertainty of one evaluation, adversarial
//! confusions, robustness curves) are there for the digits results, and on synthetic results
//! with confusions and a sweep they show their tables and decoded plots; a screenshot of each page
//! with only those sections shown (of the digits results, their full test split and the synthetic
//! ones) must show them.
//!
//! Without Chromium the test says so and passes, unless RFB_REQUIRE_BROWSER=1 (scripts/test.sh
//! sets it once Chromium is installed), when it fails. RFB_CHROMIUM names another binary.
//! RFB_SCREENSHOT_DIR=DIR keeps the screenshots there (index.png at 1280 px, index-phone.png,
//! index-insights.png, full-test-split-insights.png, synthetic-insights.png);
//! docs/report-insights.png is full-test-split-insights.png.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use rfb_bench_client::results::Results;
use rfb_bench_client::{confusion, curves, summary};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("RFB_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// Runs headless Chromium with the flags that work on a machine without network or display.
fn headless(chrome: &Path, profile: &Path, args: &[String]) -> std::process::Output {
    let mut command = Command::new("timeout");
    command
        .arg("120")
        .arg(chrome)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            // Nothing may be fetched: every host name fails to resolve.
            "--host-resolver-rules=MAP * ~NOTFOUND",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args);
    command.output().expect("running chromium")
}

/// Goes at the top of the page's <head>: records errors, then reports what the page looks like
/// to the checking page around it.
const PROBE: &str = r#"<script>(function(){
var errors=[];
window.addEventListener('error',function(e){errors.push(e.message||('failed to load '+((e.target&&(e.target.src||e.target.href))||'?')).slice(0,100));},true);
window.addEventListener('unhandledrejection',function(e){errors.push('unhandled rejection: '+e.reason);});
var original=console.error;console.error=function(){errors.push('console.error: '+Array.prototype.join.call(arguments,' '));original.apply(console,arguments);};
window.addEventListener('load',function(){
  var d=document.documentElement;
  var images=Array.prototype.slice.call(document.images);
  // At 'load' every image has loaded (or failed): a decoded PNG has its natural width, a
  // broken one 0. Synchronous on purpose: headless Chromium's virtual time does not wait for
  // asynchronous image decoding, so a promise could still be pending when the DOM is dumped.
  (function(widths){
    var outside=Array.prototype.slice.call(document.querySelectorAll('body *')).filter(function(e){
      var r=e.getBoundingClientRect();return r.width>0&&r.right>d.clientWidth+1&&!e.closest('.scroll');
    }).slice(0,5).map(function(e){return e.tagName+'.'+e.className;});
    var table=document.querySelector('#table table');
    var cells=Array.prototype.slice.call(document.querySelectorAll('.heat td.cell'));
    parent.postMessage({
      width:innerWidth,errors:errors,images:widths,
      requests:performance.getEntriesByType('resource').map(function(r){return r.name;}).filter(function(n){return n.indexOf('data:')!==0;}),
      scrollWidth:d.scrollWidth,clientWidth:d.clientWidth,outside:outside,
      tableRows:table?table.tBodies[0].rows.length:0,
      tableHeight:table?table.getBoundingClientRect().height:0,
      heatCells:cells.length,
      colouredCells:cells.filter(function(td){var c=getComputedStyle(td).backgroundColor;return c!=='rgba(0, 0, 0, 0)'&&c!=='rgb(255, 255, 255)';}).length,
      fontSize:parseFloat(getComputedStyle(document.body).fontSize),
      nav:Array.prototype.map.call(document.querySelectorAll('nav a'),function(a){return a.getAttribute('href');}),
      sections:['uncertainty','confusions','curves'].map(function(id){var s=document.getElementById(id);if(!s)return null;
        var imgs=Array.prototype.slice.call(s.querySelectorAll('img'));
        return {heading:(s.querySelector('h2')||{textContent:''}).textContent,tables:s.querySelectorAll('table').length,
          images:imgs.length,decoded:imgs.filter(function(i){return i.complete&&i.naturalWidth>=400;}).length,
          withinRows:s.querySelectorAll('table.within tbody tr').length,perClassRows:s.querySelectorAll('table.perclass tbody tr').length,
          flowRows:s.querySelectorAll('table.flows tbody tr').length,flowCells:s.querySelectorAll('table.flows td.flow').length,
          curveTables:s.querySelectorAll('table.curvetable').length,halving:s.querySelectorAll('table.curvetable td.halving').length,
          notes:s.querySelectorAll('p.note').length,height:s.getBoundingClientRect().height};}),
      title:document.title
    },'*');
  })(images.map(function(i){return i.complete?i.naturalWidth:0;}));
});})();</script>"#;

const CHECK_PAGE: &str = r#"<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>
<iframe src="page.html" style="width:1280px;height:900px;border:0"></iframe>
<iframe src="page.html" style="width:390px;height:844px;border:0"></iframe>
<pre id="result">waiting</pre>
<script>var seen={};window.addEventListener('message',function(e){seen[e.data.width]=e.data;
if(Object.keys(seen).length===2){document.getElementById('result').textContent=JSON.stringify(seen);}});</script>
</body></html>"#;

fn skip(reason: &str) {
    if std::env::var("RFB_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
        panic!("the browser test must run here (RFB_REQUIRE_BROWSER=1) but {reason}");
    }
    eprintln!(
        "SKIPPED the browser test of the report page: {reason}. scripts/test.sh installs Debian's chromium where apt-get can be used."
    );
}

#[test]
fn the_digits_report_page_renders_in_chromium_on_a_laptop_and_a_phone() {
    let Some(chrome) = chromium() else {
        skip("no Chromium on PATH (chromium, chromium-browser, google-chrome) and RFB_CHROMIUM is not set");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    if check_page(&chrome, tmp.path(), &repository().join("results/digits/results.json"), true).is_some() {
        insights_screenshot(&chrome, tmp.path(), "index-insights.png", 7000);
    }
    // The full test split's page (two models): short enough for one screenshot of all three
    // sections, the one docs/report-insights.png shows.
    let full = tempfile::tempdir().unwrap();
    if check_page(&chrome, full.path(), &repository().join("results/digits/full-test-split/results.json"), false).is_some() {
        insights_screenshot(&chrome, full.path(), "full-test-split-insights.png", 6000);
    }
}

/// Synthetic results with confusions and a sweep: the new sections show their content.
#[test]
fn the_sections_on_where_the_robustness_goes_render_in_chromium() {
    let Some(chrome) = chromium() else {
        skip("no Chromium on PATH (chromium, chromium-browser, google-chrome) and RFB_CHROMIUM is not set");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut results = common::cifar_like(&["rslad", "absld"], &[0, 1], 100);
    common::add_confusions(&mut results);
    common::add_sweep(&mut results);
    let from = tmp.path().join("results.json");
    results.save(&from).unwrap();
    let Some(views) = check_page(&chrome, tmp.path(), &from, false) else { return };
    let classes = 10;
    for width in ["1280", "390"] {
        let v = &views[width];
        let what = format!("at {width} px");
        let [uncertainty, confusions, curves] = [&v["sections"][0], &v["sections"][1], &v["sections"][2]];
        assert_eq!(uncertainty["withinRows"].as_u64().unwrap(), 2 * 5, "{what}");
        assert_eq!(uncertainty["perClassRows"].as_u64().unwrap(), 2 * 5 * classes, "{what}");
        assert_eq!(confusions["flowRows"].as_u64().unwrap(), 2 * 5, "{what}");
        assert_eq!(confusions["flowCells"].as_u64().unwrap(), 2 * 5 * 5, "five flows each, {what}");
        assert_eq!(confusions["decoded"].as_u64().unwrap(), 2 * 5, "a heatmap per model and attack, {what}");
        assert_eq!(curves["curveTables"].as_u64().unwrap(), 2, "{what}");
        assert_eq!(curves["halving"].as_u64().unwrap(), 2 * classes, "{what}");
        assert_eq!(curves["decoded"].as_u64().unwrap(), 2, "a curve plot per model, {what}");
    }
    insights_screenshot(&chrome, tmp.path(), "synthetic-insights.png", 2400);
}

/// Screenshots the page that [`check_page`] made under `tmp` with every section but the three on
/// where the robustness goes hidden, checks that they show (text, and the heatmaps' blues), and keeps it in RFB_SCREENSHOT_DIR as `name`.
fn insights_screenshot(chrome: &Path, tmp: &Path, name: &str, height: u32) {
    let html = std::fs::read_to_string(tmp.join("page/index.html")).unwrap();
    let only = html.replacen("<head>", "<head><style>#table,#heatmaps,#differences,#plots,#provenance{display:none}</style>", 1);
    let only_path = tmp.join("page/insights.html");
    std::fs::write(&only_path, only).unwrap();
    let shot = tmp.join(name);
    let size = (1280u32, height);
    let run = headless(
        chrome,
        &tmp.join("profile"),
        &[
            format!("--window-size={},{}", size.0, size.1),
            format!("--screenshot={}", shot.display()),
            format!("file://{}", only_path.display()),
        ],
    );
    assert!(shot.is_file(), "no screenshot: {}", String::from_utf8_lossy(&run.stderr));
    let image = image::open(&shot).unwrap().to_rgb8();
    assert_eq!((image.width(), image.height()), size);
    let dark = image.pixels().filter(|p| p.0.iter().all(|&c| c < 80)).count();
    let blue = image.pixels().filter(|p| u16::from(p.0[2]) > u16::from(p.0[0]) + 40 && p.0[2] > 90).count();
    assert!(dark > 5000, "{name}: little text ({dark} dark pixels)");
    assert!(blue > 5000, "{name}: no heatmap ({blue} blue pixels)");
    if let Some(dir) = std::env::var_os("RFB_SCREENSHOT_DIR").map(PathBuf::from) {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&shot, dir.join(name)).unwrap();
    }
}

/// Makes the page from `from`, checks it at a laptop's and a phone's width and returns what the
/// probe saw per width (None when Chromium could not start); `screenshots`: also the laptop and
/// phone screenshots.
fn check_page(chrome: &Path, tmp: &Path, from: &Path, screenshots: bool) -> Option<serde_json::Value> {
    let page_dir = tmp.join("page");
    let output =
        Command::new(env!("CARGO_BIN_EXE_bench-client")).args(["report", "--from"]).arg(from).arg("--out").arg(&page_dir).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let html = std::fs::read_to_string(page_dir.join("index.html")).unwrap();

    // Self-contained: no script, no stylesheet or font to fetch, every image inline.
    assert!(!html.contains("<script"), "the page needs no script");
    assert!(!html.contains("<link"), "nothing linked");
    for attribute in [" src=\"", " href=\"", "url("] {
        for (i, _) in html.match_indices(attribute) {
            let value = &html[i + attribute.len()..(i + attribute.len() + 40).min(html.len())];
            assert!(value.starts_with("data:") || value.starts_with('#'), "{attribute}{value}…: only inline data and anchors");
        }
    }

    // Expected content, from the same results.
    let results = Results::load(from).unwrap();
    let summary = summary::summarize(&results);
    let classes = results.models[0].class_names.len();
    let expected_cells = summary.models.len() * classes * summary.attacks.len();
    let confusions = confusion::mean_confusions(&results).len();
    let model_curves = curves::model_curves(&results).len();
    // One class-wise picture per attack, metrics, a heatmap per model and attack with
    // confusions, a curve plot per model with a sweep.
    let expected_images = summary.attacks.len() + 1 + confusions + model_curves;

    let probe_dir = tmp.join("probe");
    std::fs::create_dir_all(&probe_dir).unwrap();
    let instrumented = html.replacen("<head>", &format!("<head>{PROBE}"), 1);
    assert_ne!(instrumented, html);
    std::fs::write(probe_dir.join("page.html"), instrumented).unwrap();
    std::fs::write(probe_dir.join("check.html"), CHECK_PAGE).unwrap();
    let profile = tmp.join("profile");
    let run = headless(
        chrome,
        &profile,
        &[
            "--window-size=1700,1000".into(),
            "--virtual-time-budget=15000".into(),
            "--dump-dom".into(),
            format!("file://{}", probe_dir.join("check.html").display()),
        ],
    );
    let dom = String::from_utf8_lossy(&run.stdout);
    if !run.status.success() && dom.trim().is_empty() {
        skip(&format!("{} did not start: {}", chrome.display(), String::from_utf8_lossy(&run.stderr).lines().last().unwrap_or("")));
        return None;
    }
    let start = dom.find("<pre id=\"result\">").map(|i| i + "<pre id=\"result\">".len()).expect("the check page");
    let end = start + dom[start..].find("</pre>").unwrap();
    let text = dom[start..end].replace("&quot;", "\"").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&");
    assert_ne!(text, "waiting", "the page never finished loading in Chromium:\n{}", String::from_utf8_lossy(&run.stderr));
    let views: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    for width in ["1280", "390"] {
        let v = &views[width];
        let what = format!("at {width} px: {v}");
        assert_eq!(v["errors"], serde_json::json!([]), "errors {what}");
        assert_eq!(v["requests"], serde_json::json!([]), "requests outside the page {what}");
        let images = v["images"].as_array().unwrap();
        assert_eq!(images.len(), expected_images, "{what}");
        assert!(images.iter().all(|w| w.as_f64().unwrap() >= 400.0), "every plot decodes, {what}");
        assert_eq!(v["tableRows"].as_u64().unwrap() as usize, summary.models.len(), "{what}");
        assert!(v["tableHeight"].as_f64().unwrap() > 50.0, "the table shows, {what}");
        assert_eq!(v["heatCells"].as_u64().unwrap() as usize, expected_cells, "{what}");
        assert_eq!(v["colouredCells"].as_u64().unwrap() as usize, expected_cells, "every heatmap cell coloured, {what}");
        assert!(v["scrollWidth"].as_f64().unwrap() <= v["clientWidth"].as_f64().unwrap(), "no sideways scrolling of the page, {what}");
        assert_eq!(v["outside"], serde_json::json!([]), "everything but the scrolling tables fits the width, {what}");
        assert!(v["fontSize"].as_f64().unwrap() >= 14.0, "readable text, {what}");
        if screenshots {
            assert!(v["title"].as_str().unwrap().contains("digits"), "{what}");
        }
        // The sections on where the robustness goes, linked and headed, whatever the results hold.
        for (i, (id, heading)) in
            [("uncertainty", "Uncertainty of one evaluation"), ("confusions", "Adversarial confusions"), ("curves", "Robustness curves")]
                .iter()
                .enumerate()
        {
            assert!(v["nav"].as_array().unwrap().iter().any(|h| h == &format!("#{id}")), "#{id} in the navigation, {what}");
            let section = &v["sections"][i];
            assert_eq!(section["heading"], *heading, "{what}");
            assert!(section["height"].as_f64().unwrap() > 40.0, "{id} shows, {what}");
        }
        let [uncertainty, confusions_seen, curves_seen] = [&v["sections"][0], &v["sections"][1], &v["sections"][2]];
        let evaluated: usize = results.models.iter().flat_map(|m| &m.runs).map(|r| r.attacks.len()).sum();
        assert!(evaluated == 0 || uncertainty["withinRows"].as_u64().unwrap() > 0, "{what}");
        assert_eq!(confusions_seen["images"].as_u64().unwrap() as usize, confusions, "{what}");
        assert_eq!(curves_seen["images"].as_u64().unwrap() as usize, model_curves, "{what}");
        if confusions == 0 {
            assert!(confusions_seen["notes"].as_u64().unwrap() >= 1, "the section says why it is empty, {what}");
        }
        if model_curves == 0 {
            assert!(curves_seen["notes"].as_u64().unwrap() >= 1, "the section says why it is empty, {what}");
        }
    }
    if !screenshots {
        return Some(views);
    }

    // Screenshots: the laptop view, and the narrowest window headless Chromium lays out (500 px;
    // the 390 px checks above ran in a frame).
    let keep = std::env::var_os("RFB_SCREENSHOT_DIR").map(PathBuf::from);
    for (name, size) in [("index.png", (1280u32, 2000u32)), ("index-phone.png", (500, 1400))] {
        let shot = tmp.join(name);
        let run = headless(
            chrome,
            &profile,
            &[
                format!("--window-size={},{}", size.0, size.1),
                format!("--screenshot={}", shot.display()),
                format!("file://{}", page_dir.join("index.html").display()),
            ],
        );
        assert!(shot.is_file(), "no screenshot: {}", String::from_utf8_lossy(&run.stderr));
        let image = image::open(&shot).unwrap().to_rgb8();
        assert_eq!((image.width(), image.height()), size);
        // Not blank: the heatmaps' colours and dark text are in it.
        let dark = image.pixels().filter(|p| p.0.iter().all(|&c| c < 80)).count();
        let violet = image.pixels().filter(|p| u16::from(p.0[2]) > u16::from(p.0[1]) + 30 && p.0[0] < 120).count();
        assert!(dark > 2000, "{name}: little text ({dark} dark pixels)");
        assert!(violet > 500, "{name}: no heatmap colours ({violet} pixels)");
        if let Some(dir) = &keep {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::copy(&shot, dir.join(name)).unwrap();
        }
    }
    Some(views)
}
