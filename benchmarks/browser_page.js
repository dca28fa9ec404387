// Instrumentation bench_browser.py injects into the page before Gradio loads (Playwright init script).
// Everything is timed with performance.now() in the page; nothing here changes what the app does.
(() => {
  const B = (window.__bench = { armed: null });
  const now = () => performance.now();
  const rec = (what, extra) => {
    if (B.armed) B.armed.events.push(Object.assign({ what, t: now() }, extra || {}));
  };

  // The slider's number box dispatches Gradio's `input` on every DOM input event (Enter is a no-op).
  document.addEventListener("input", (e) => {
    if (B.armed && e.target.closest && e.target.closest("#threshold")) {
      if (B.armed.input === null) B.armed.input = now();
      B.armed.lastInput = now();  // typing key by key sends one input event (and one request) per key
      rec("input", { value: e.target.value });
    }
  }, true);

  // Queue joins (one per event, the .then included) and the SSE messages that answer them.
  const originalFetch = window.fetch;
  window.fetch = function (input, init) {
    const url = String(typeof input === "string" ? input : input && input.url);
    if (url.includes("/queue/join")) {
      rec("join", { bytes: init && typeof init.body === "string" ? init.body.length : 0 });
      if (B.armed) B.armed.joins += 1;
    } else if (/\/run\/|\/call\//.test(url) && init && init.method === "POST" && B.armed) {
      // An event with queue=False: one POST answered directly, no SSE stream.
      const armed = B.armed;
      rec("join", { bytes: typeof init.body === "string" ? init.body.length : 0, direct: true });
      armed.joins += 1;
      return originalFetch.apply(this, arguments).then((response) => {
        rec("sse:process_completed", { bytes: Number(response.headers.get("content-length")) || 0, direct: true });
        armed.closed += 1;
        return response;
      });
    }
    return originalFetch.apply(this, arguments);
  };
  const decoder = new TextDecoder();
  const originalRead = ReadableStreamDefaultReader.prototype.read;
  ReadableStreamDefaultReader.prototype.read = function () {
    return originalRead.call(this).then((result) => {
      if (B.armed && result && result.value) {
        const text = typeof result.value === "string" ? result.value : decoder.decode(result.value);
        for (const match of text.matchAll(/"msg":\s*"(\w+)"/g)) {
          rec("sse:" + match[1], { bytes: text.length });
          if (match[1] === "process_completed") B.armed.closed += 1;  // one per event; streams may be shared
        }
      }
      return result;
    });
  };

  // DOM changes inside the result components; the overlay's new image is decoded as soon as it is set.
  new MutationObserver((mutations) => {
    if (!B.armed) return;
    for (const m of mutations) {
      const el = m.target.nodeType === 1 ? m.target : m.target.parentElement;
      const box = el && el.closest("#overlay, #objects, #legend, #status, #cutouts");
      if (!box) continue;
      B.armed.lastMutation = now();
      const added = m.type === "childList" ? [...m.addedNodes].flatMap((n) =>
        n.nodeType !== 1 ? [] : n.tagName === "IMG" ? [n] : [...n.querySelectorAll("img")]) : [];
      const images = box.id !== "overlay" ? [] : m.type === "attributes" && el.tagName === "IMG" ? [el] : added;
      if (images.length) {
        rec("overlay-src");
        images[0].decode().then(() => rec("overlay-decoded")).catch(() => rec("overlay-decode-failed"));
      } else {
        B.armed.lastDom[box.id] = now();
      }
    }
  }).observe(document, { subtree: true, childList: true, attributes: true, characterData: true });

  // Long animation frames (main-thread work per frame, with the scripts that ran in it).
  try {
    new PerformanceObserver((list) => {
      if (!B.armed) return;
      for (const e of list.getEntries()) {
        B.armed.loaf.push({
          start: e.startTime, duration: e.duration, blocking: e.blockingDuration,
          render: e.renderStart ? e.startTime + e.duration - e.renderStart : 0,
          scripts: e.scripts.map((s) => ({ src: (s.sourceURL || "").split("/").pop(), fn: s.sourceFunctionName,
                                            invoker: s.invoker, duration: s.duration })),
        });
      }
    }).observe({ type: "long-animation-frame", buffered: false });
  } catch (err) { /* older Chromium: no attribution, timings still work */ }

  function objectCount() {
    const status = document.querySelector("#status textarea");
    const match = status && status.value.match(/Objects: (\d+)/);
    return match ? Number(match[1]) : null;
  }

  // Every animation frame: is the new overlay decoded and the new count shown? The frame after the
  // first such rAF callback is the one that paints it; a message posted from rAF runs after that paint.
  function onFrame() {
    const a = B.armed;
    if (!a || a.painted !== null) return;
    const img = document.querySelector("#overlay img");
    const overlayReady = img && img.src && img.src !== a.oldSrc && img.complete && img.naturalWidth > 0;
    const statusReady = objectCount() === a.expected;
    if (statusReady && a.statusFrame === null) a.statusFrame = now();
    if (overlayReady && statusReady && a.readyFrame === null) {
      a.readyFrame = now();
      const channel = new MessageChannel();
      channel.port1.onmessage = () => { a.painted = now(); a.overlaySrc = img.src; };
      channel.port2.postMessage(null);
    }
    requestAnimationFrame(onFrame);
  }

  B.arm = (expected) => {
    performance.clearResourceTimings();
    const img = document.querySelector("#overlay img");
    B.armed = { expected, oldSrc: img ? img.src : "", input: null, lastInput: null, events: [], loaf: [], joins: 0, closed: 0,
                statusFrame: null, readyFrame: null, painted: null, lastMutation: 0, lastDom: {}, overlaySrc: null };
    requestAnimationFrame(onFrame);
  };

  // Gallery images still loading (lazy ones off screen never load, so they do not count).
  B.galleryPending = () => [...document.querySelectorAll("#cutouts img")].filter((img) => !img.complete && img.loading !== "lazy");

  // Settled: overlay painted, every queued event answered, gallery images loaded, DOM quiet for `quietMs`.
  B.settled = (quietMs) => {
    const a = B.armed;
    if (!a || a.painted === null || a.joins === 0 || a.closed < a.joins) return false;
    const pending = B.galleryPending().length > 0;
    return !pending && now() - Math.max(a.lastMutation, a.painted) > quietMs;
  };

  // What a timed-out move was waiting for.
  B.state = () => {
    const a = B.armed || {};
    const img = document.querySelector("#overlay img");
    return { shownCount: objectCount(), expected: a.expected, status: (document.querySelector("#status textarea") || {}).value,
             overlayChanged: !!img && img.src !== a.oldSrc, overlayComplete: !!img && img.complete, painted: a.painted,
             joins: a.joins, closed: a.closed, sinceMutation: now() - a.lastMutation, lastDom: a.lastDom,
             pendingImages: B.galleryPending().map((i) => i.outerHTML.slice(0, 200)),
             events: (a.events || []).map((e) => e.what).join(" ") };
  };

  B.collect = () => {
    const a = B.armed;
    B.armed = null;
    const resource = a.overlaySrc ? performance.getEntriesByName(a.overlaySrc)[0] : null;
    const cutouts = performance.getEntriesByType("resource").filter((r) => /\.(png|webp|jpe?g)(\?|$)/.test(r.name)
      && r.name !== a.overlaySrc);
    return {
      input: a.input, lastInput: a.lastInput, expected: a.expected, statusFrame: a.statusFrame, readyFrame: a.readyFrame, painted: a.painted,
      lastDom: a.lastDom, events: a.events, loaf: a.loaf, joins: a.joins,
      overlay: resource ? { start: resource.startTime, responseStart: resource.responseStart, end: resource.responseEnd,
                            bytes: resource.encodedBodySize } : null,
      cutouts: { count: cutouts.length, bytes: cutouts.reduce((s, r) => s + r.encodedBodySize, 0),
                 end: cutouts.reduce((m, r) => Math.max(m, r.responseEnd), 0) },
    };
  };
})();
