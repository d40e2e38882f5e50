// Run in the page by tests/e2e/web_support.py: every visible form control has an accessible
// name, and every visible text has a WCAG 2 contrast ratio of at least 4.5:1 against its
// background (3:1 for large text). Answers a list of problems.
(() => {
  const problems = [];
  const visible = (e) => e.offsetParent !== null || e.getClientRects().length > 0;
  for (const c of document.querySelectorAll("input, textarea, select, button")) {
    if (!visible(c)) continue;
    const named = (c.labels && c.labels.length) || c.getAttribute("aria-label") ||
      (c.tagName === "BUTTON" && c.textContent.trim());
    if (!named) problems.push(`no label: ${c.outerHTML.slice(0, 80)}`);
  }
  const rgb = (s) => s.match(/[\d.]+/g).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (e) => {
    for (; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length < 4 || c[3] > 0) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  for (const e of document.querySelectorAll("body *")) {
    if (!visible(e)) continue;
    const text = [...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!text) continue;
    const style = getComputedStyle(e);
    const a = lum(rgb(style.color).slice(0, 3)), b = lum(background(e));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    if (ratio < (large ? 3 : 4.5)) {
      problems.push(`contrast ${ratio.toFixed(2)}: ${e.textContent.trim().slice(0, 40)}`);
    }
  }
  return problems;
})
