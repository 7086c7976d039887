// edgeloop's dashboard: reads the daemon's JSON endpoints every few seconds
// and draws them with uPlot. No other network: everything is served by the
// daemon (src/http/dashboard.rs).
//
// State for tests and the curious: window.edgeloopDashboard = {errors,
// plots: {id: data points drawn}, refreshes, ready}; each plot's element
// carries data-points, <body> data-ready and data-errors.
(function () {
  "use strict";
  var REFRESH_MS = 5000;
  var TOKEN_KEY = "edgeloop.token";
  var state = (window.edgeloopDashboard = { errors: [], plots: {}, refreshes: 0, ready: false });
  var charts = {};

  // Every error is counted: uncaught exceptions, rejected promises, files
  // that failed to load (capture phase) and console.error calls (uPlot's
  // included).
  var consoleError = window.console && console.error ? console.error.bind(console) : function () {};
  function record(text) {
    state.errors.push(text);
    document.body.dataset.errors = String(state.errors.length);
  }
  function fail(what) {
    var text = what && what.stack ? what.stack : String(what);
    record(text);
    showMessage("Dashboard error: " + text);
    consoleError(text);
  }
  if (window.console) {
    console.error = function () {
      record(Array.prototype.map.call(arguments, String).join(" "));
      consoleError.apply(null, arguments);
    };
  }
  window.addEventListener("error", function (e) {
    var t = e.target;
    if (t && t !== window && (t.src || t.href)) fail("failed to load " + (t.src || t.href));
    else fail(e.error || e.message);
  }, true);
  window.addEventListener("unhandledrejection", function (e) { fail(e.reason); });

  function showMessage(text) {
    var m = document.getElementById("message");
    m.textContent = text;
    m.hidden = !text;
  }

  // The token: from a #token=… fragment (then removed from the address
  // bar), else asked for on a 401 and kept for this tab only.
  (function tokenFromFragment() {
    var m = location.hash.match(/(?:^#|&)token=([^&]+)/);
    if (m) {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
  })();

  var needToken = false;
  function askToken(status) {
    var t = window.prompt(
      (status === 403 ? "Wrong token. " : "") +
        "This daemon needs its token to show data (http.token_file):"
    );
    if (t && t.trim()) {
      sessionStorage.setItem(TOKEN_KEY, t.trim());
      return true;
    }
    return false;
  }
  document.getElementById("token-button").addEventListener("click", function () {
    if (askToken(401)) {
      needToken = false;
      document.getElementById("token-button").hidden = true;
      showMessage("");
      refresh();
    }
  });

  function AuthNeeded(status) { this.status = status; }

  function api(path, retried) {
    var headers = {};
    var token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    return fetch(path, { headers: headers, cache: "no-store" }).then(function (r) {
      if (r.status === 401 || r.status === 403) {
        if (r.status === 403) sessionStorage.removeItem(TOKEN_KEY);
        if (!retried && askToken(r.status)) return api(path, true);
        throw new AuthNeeded(r.status);
      }
      return r.json().then(function (body) {
        if (!r.ok) throw new Error(path + ": " + r.status + " " + (body.error || ""));
        return body;
      });
    });
  }

  // ---- formatting -------------------------------------------------------
  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) {
      if (k === "text") e.textContent = attrs[k];
      else if (k === "cls") e.className = attrs[k];
      else e.setAttribute(k, attrs[k]);
    }
    (children || []).forEach(function (c) { if (c != null) e.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return e;
  }
  function num(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    if (typeof v !== "number") return String(v);
    if (digits === undefined) return Math.abs(v) >= 1000 ? Math.round(v).toLocaleString("en") : String(Math.round(v * 1000) / 1000);
    return v.toFixed(digits);
  }
  function pct(v) { return v === null || v === undefined ? "–" : (v * 100).toFixed(1) + " %"; }
  function time(ms) { return new Date(ms).toLocaleTimeString("en-GB"); }
  function dateTime(ms) {
    var d = new Date(ms), p = function (n) { return String(n).padStart(2, "0"); };
    return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " + p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
  }
  function idFor(name) { return String(name).replace(/[^A-Za-z0-9_-]/g, "_"); }

  // A pipeline that retrains for months has hundreds of versions: the page
  // shows the serving one (the champion) and the SHOWN_VERSIONS newest in
  // the live-score plot, the versions table and the confusion matrices, and
  // says how many it left out (GET …/versions and …/series hold them all).
  var SHOWN_VERSIONS = 6;
  function shownVersions(versions, serving) {
    var newest = versions.slice().sort(function (a, b) { return b - a; }).slice(0, SHOWN_VERSIONS);
    if (serving !== null && serving !== undefined && versions.indexOf(serving) >= 0 && newest.indexOf(serving) < 0) newest.push(serving);
    return newest.sort(function (a, b) { return a - b; });
  }
  // The note under a plot or table: what it shows of how many, or nothing
  // when it shows them all. data-shown and data-hidden hold the counts.
  function hiddenNote(box, what, shown, total, serving) {
    box.dataset.shown = String(shown.length);
    box.dataset.hidden = String(total - shown.length);
    box.hidden = total === shown.length;
    var champion = serving !== null && serving !== undefined && shown.length > SHOWN_VERSIONS;
    box.textContent = total === shown.length ? "" :
      "Showing the " + SHOWN_VERSIONS + " newest of " + total + " " + what +
      (champion ? " and the serving v" + serving : "") + "; " + (total - shown.length) + " older hidden.";
  }

  // ---- plots ------------------------------------------------------------
  var COLORS = ["#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04"];
  var MARKS = { trained: "#16a34a", promote: "#2563eb", rollback: "#ea580c", refused: "#9ca3af", imported: "#9333ea", drift_alarm: "#dc2626", data_drift_alarm: "#db2777", anomaly_alarm: "#ca8a04" };

  function countPoints(data) {
    var n = 0;
    for (var s = 1; s < data.length; s++)
      for (var i = 0; i < data[s].length; i++) if (data[s][i] !== null && data[s][i] !== undefined && !Number.isNaN(data[s][i])) n++;
    return n;
  }

  function marksPlugin(getMarks) {
    return {
      hooks: {
        draw: [function (u) {
          var ctx = u.ctx, b = u.bbox;
          getMarks().forEach(function (m) {
            var x = Math.round(u.valToPos(m.t, "x", true));
            if (x < b.left || x > b.left + b.width) return;
            ctx.save();
            ctx.strokeStyle = MARKS[m.action] || "#6b7280";
            ctx.lineWidth = 2 * (window.devicePixelRatio || 1);
            if (/_alarm$/.test(m.action) || m.action === "refused") ctx.setLineDash([6, 4]);
            ctx.beginPath();
            ctx.moveTo(x, b.top);
            ctx.lineTo(x, b.top + b.height);
            ctx.stroke();
            ctx.restore();
          });
        }],
      },
    };
  }

  // A y axis as wide as its widest label (uPlot's demos/axis-autosize.html):
  // a fixed width cut "600,000" to "00,000". data-y-axis-px and
  // data-y-label-px on the plot's element record the last sizes.
  function axisSize(id) {
    return function (u, values, axisIdx, cycleNum) {
      var axis = u.axes[axisIdx];
      if (cycleNum > 1) return axis._size;
      var widest = 0;
      if (values && values.length) {
        u.ctx.font = axis.font[0];
        values.forEach(function (v) { widest = Math.max(widest, u.ctx.measureText(String(v)).width); });
        widest = widest / (window.devicePixelRatio || 1);
      }
      var size = Math.ceil(axis.ticks.size + axis.gap + widest + 6);
      var target = document.getElementById(id);
      if (target) {
        target.dataset.yAxisPx = String(size);
        target.dataset.yLabelPx = String(Math.ceil(widest));
      }
      return size;
    };
  }

  // Draws `data` ([xs, ys…], x in seconds) into element `id`, creating the
  // chart on first use (or when the series change).
  function plot(id, series, data, opts) {
    var target = document.getElementById(id);
    if (!target) return;
    var key = series.map(function (s) { return s.label; }).join("|");
    var c = charts[id];
    if (!c || c.key !== key) {
      if (c) c.chart.destroy();
      var width = (opts && opts.width) || 520;
      var config = {
        width: width,
        height: (opts && opts.height) || 200,
        series: [{}].concat(series.map(function (s, i) {
          return {
            label: s.label,
            stroke: s.color || COLORS[i % COLORS.length],
            width: 2,
            dash: s.dash,
            spanGaps: s.spanGaps !== false,
            points: { show: true, size: 4 },
            value: s.value,
          };
        })),
        scales: { x: { time: true }, y: opts && opts.yRange ? { range: opts.yRange } : {} },
        axes: [{}, { size: axisSize(id), values: opts && opts.yValues }],
        plugins: opts && opts.marks ? [marksPlugin(opts.marks)] : [],
      };
      target.innerHTML = "";
      charts[id] = c = { key: key, chart: new uPlot(config, data, target) };
    } else {
      c.chart.setData(data);
    }
    var n = countPoints(data);
    state.plots[id] = n;
    target.dataset.points = String(n);
  }

  // ---- ingest -----------------------------------------------------------
  function renderIngest(series, stats) {
    var xs = series.t_ms.map(function (t) { return t / 1000; });
    plot("plot-rates",
      [{ label: "received/s" }, { label: "stored/s" }, { label: "rejected/s" }, { label: "predictions/s" }],
      [xs, series.per_second.received, series.per_second.stored, series.per_second.rejected, series.per_second.predictions]);
    plot("plot-totals",
      [{ label: "stored" }, { label: "rejected" }, { label: "duplicates" }],
      [xs, series.totals.stored, series.totals.rejected, series.totals.duplicates]);
    var reasons = ["not_json", "not_object", "too_large", "no_features"];
    plot("plot-reasons",
      reasons.map(function (r) { return { label: r }; }),
      [xs].concat(reasons.map(function (r) { return series.totals[r]; })));
    var counters = document.getElementById("counters");
    counters.innerHTML = "";
    [["messages", stats.messages_received], ["stored", stats.samples_stored], ["rejected", stats.samples_rejected],
     ["salvaged", stats.samples_salvaged], ["duplicates", stats.duplicates], ["predictions", stats.predictions_made],
     ["dropped", stats.predictions_dropped], ["trainings", stats.trainings], ["failed trainings", stats.trainings_failed]]
      .forEach(function (kv) { counters.appendChild(el("div", {}, [el("b", { text: num(kv[1]) }), el("span", { cls: "muted", text: kv[0] })])); });
  }

  function renderHealth(h) {
    var badge = document.getElementById("health");
    badge.textContent = h.status === "ok" ? "healthy" : "unhealthy: " + (h.reasons || []).join(", ");
    badge.className = "badge " + (h.status === "ok" ? "ok" : "bad");
    var broker = document.getElementById("broker");
    broker.textContent = h.mqtt_connected ? (h.mqtt_subscribed ? "broker connected" : "broker connected, not subscribed") : "broker disconnected";
    broker.className = "badge " + (h.mqtt_connected ? (h.mqtt_subscribed ? "ok" : "warn") : "bad");
  }

  // ---- pipelines --------------------------------------------------------
  function pipelineSection(p) {
    var id = "pipeline-" + idFor(p.name);
    var s = document.getElementById(id);
    if (s) return s;
    s = el("section", { id: id, cls: "pipeline" }, [
      el("h2", { text: "Pipeline " + p.name }),
      el("div", { cls: "muted", "data-role": "summary" }),
      el("h3", { text: "Live score over time, per served version" }),
      el("div", { cls: "plot", id: "plot-accuracy-" + idFor(p.name) }),
      el("p", { cls: "muted", "data-role": "accuracy-hidden", hidden: "" }),
      el("div", { cls: "legend-marks" }, Object.keys(MARKS).map(function (a) {
        return el("span", {}, [el("i", { style: "background:" + MARKS[a] }), a]);
      })),
      el("h3", { text: "Drift" }),
      el("div", { "data-role": "drift" }),
      el("h3", { "data-role": "anomaly-title", text: "Anomaly scores (Half-Space Trees), between points", hidden: "" }),
      el("div", { cls: "plot", id: "plot-anomaly-" + idFor(p.name), hidden: "" }),
      el("h3", { text: "Versions side by side" }),
      el("p", { cls: "muted", "data-role": "versions-hidden", hidden: "" }),
      el("div", { "data-role": "versions" }),
      el("h3", { text: "Confusion matrices (holdout; rows: true class, columns: predicted)" }),
      el("div", { cls: "heatmaps", "data-role": "heatmaps" }),
    ]);
    document.getElementById("pipelines").appendChild(s);
    return s;
  }

  function renderAccuracy(section, p, series) {
    var regression = series.task === "regression";
    var values = regression ? series.mean_abs_error : series.accuracy;
    var events = series.events || [];
    var served = Array.from(new Set(series.version));
    var versions = shownVersions(served, series.serving_version);
    hiddenNote(section.querySelector('[data-role="accuracy-hidden"]'), "served versions", versions, served.length, series.serving_version);
    // x: from the first point of a shown version, every point and every
    // event after it, so that each mark is inside the plot.
    var from = Infinity;
    series.t_ms.forEach(function (t, i) { if (versions.indexOf(series.version[i]) >= 0) from = Math.min(from, t); });
    var times = series.t_ms.slice();
    events.forEach(function (e) { times.push(e.at_ms); });
    times = Array.from(new Set(times)).filter(function (t) { return !(t < from); }).sort(function (a, b) { return a - b; });
    events = events.filter(function (e) { return !(e.at_ms < from); });
    var at = {};
    times.forEach(function (t, i) { at[t] = i; });
    var cols = versions.map(function () { return times.map(function () { return null; }); });
    var windowCol = times.map(function () { return null; });
    series.t_ms.forEach(function (t, i) {
      if (at[t] === undefined) return;
      var col = versions.indexOf(series.version[i]);
      if (col >= 0) cols[col][at[t]] = values[i];
      if (!regression) windowCol[at[t]] = series.window_accuracy[i];
    });
    var defs = versions.map(function (v, i) {
      return { label: (regression ? "MAE v" : "accuracy v") + v, color: COLORS[i % COLORS.length] };
    });
    var data = [times.map(function (t) { return t / 1000; })].concat(cols);
    if (!regression) {
      defs.push({ label: "between points", color: "#9ca3af", dash: [4, 4] });
      data.push(windowCol);
    }
    var marks = events.map(function (e) { return { t: e.at_ms / 1000, action: e.action }; });
    plot("plot-accuracy-" + idFor(p.name), defs, data, {
      width: Math.max(520, Math.min(1100, document.querySelector("main").clientWidth - 40)),
      height: 240,
      marks: function () { return marks; },
      yRange: regression ? undefined : [0, 1],
    });
  }

  // The anomaly scores of the readings the predictor scored: the mean score
  // and the share that alarmed between points (null: the pipeline does not
  // score).
  function renderAnomaly(section, p, a) {
    var id = "plot-anomaly-" + idFor(p.name);
    var show = !!a && a.t_ms.length > 0;
    document.getElementById(id).hidden = !show;
    section.querySelector('[data-role="anomaly-title"]').hidden = !show;
    if (!show) return;
    plot(id, [{ label: "mean score" }, { label: "share alarmed", color: "#dc2626" }],
      [a.t_ms.map(function (t) { return t / 1000; }), a.mean_score, a.alarm_share],
      { yRange: [0, 1], width: Math.max(520, Math.min(1100, document.querySelector("main").clientWidth - 40)) });
  }

  function renderDrift(section, drift) {
    var box = section.querySelector('[data-role="drift"]');
    box.innerHTML = "";
    var c = drift.concept || {};
    var det = c.detector || {};
    var parts = Object.keys(det).map(function (k) { return k + " " + num(det[k]); });
    box.appendChild(el("p", {}, [
      "Concept drift (error stream of version " + num(c.serving_version) + "): " + (parts.join(", ") || "no labelled sample scored yet") +
      "; scored " + num(c.scored) + (c.error_rate !== undefined && c.error_rate !== null ? ", error rate " + pct(c.error_rate) : "") +
      (c.mean_abs_error !== undefined && c.mean_abs_error !== null ? ", mean |error| " + num(c.mean_abs_error) : "") +
      "; alarms " + (c.alarms || []).length + ".",
    ]));
    var alarms = (c.alarms || []).slice(-5).reverse();
    if (alarms.length) {
      box.appendChild(el("table", { cls: "grid" }, [
        el("thead", {}, [el("tr", {}, ["alarm at", "sample", "version", "action"].map(function (h) { return el("th", { text: h }); }))]),
        el("tbody", {}, alarms.map(function (a) {
          return el("tr", {}, [time(a.at_ms), num(a.sample_seq), num(a.serving_version), a.action].map(function (v) { return el("td", { text: v }); }));
        })),
      ]));
    }
    var d = drift.data || {};
    if (!d.features) {
      box.appendChild(el("p", { cls: "muted", text: "Data drift: " + (d.message || "not available") }));
      return;
    }
    box.appendChild(el("p", { cls: "muted", text: "Data drift per feature: " + d.current_samples + " recent samples against " + d.reference_samples +
      " of the serving version's training data (KS or means at effective sample sizes p < " + d.rule.alpha +
      " with PSI ≥ " + d.rule.psi_floor + " or shift ≥ " + d.rule.shift_floor + " sd" +
      (d.rule.range_floor === null || d.rule.range_floor === undefined ? "" : "; or ≥ " + d.rule.range_floor + " of the window outside the reference's range") + ")." }));
    var pv = function (p) { return typeof p === "number" ? p.toExponential(1) : "–"; };
    box.appendChild(el("table", { cls: "grid" }, [
      el("thead", {}, [el("tr", {}, ["feature", "PSI", "shift (sd)", "KS statistic", "KS p (effective)", "means p (effective)", "outside range", "drifted"].map(function (h) { return el("th", { text: h }); }))]),
      el("tbody", {}, d.features.map(function (f) {
        return el("tr", {}, [
          el("td", { text: f.feature }), el("td", { text: num(f.psi, 3) }), el("td", { text: num(f.shift, 2) }), el("td", { text: num(f.ks_statistic, 3) }),
          el("td", { text: pv(f.ks_p_value_effective) }), el("td", { text: pv(f.mean_p_value_effective) }), el("td", { text: num(f.outside_range, 3) }),
          el("td", { cls: f.drifted ? "drifted" : "", text: f.drifted ? "yes" : "no" }),
        ]);
      })),
    ]));
  }

  function renderVersions(section, v) {
    var box = section.querySelector('[data-role="versions"]');
    box.innerHTML = "";
    var all = v.versions || [];
    var keep = shownVersions(all.map(function (x) { return x.version; }), v.serving_version);
    hiddenNote(section.querySelector('[data-role="versions-hidden"]'), "versions", keep, all.length, v.serving_version);
    var list = all.filter(function (x) { return keep.indexOf(x.version) >= 0; });
    if (!list.length) { box.appendChild(el("p", { cls: "muted", text: "No version yet: the pipeline trains once enough labelled samples are stored." })); return; }
    function comp(m) { return m ? Object.keys(m).map(function (k) { return k + ": " + m[k]; }).join(", ") : "–"; }
    function live(l) { return !l ? "–" : (l.accuracy !== null && l.accuracy !== undefined ? pct(l.accuracy) : "MAE " + num(l.mean_abs_error)) + " of " + num(l.scored); }
    function aug(a) { return !a ? "none" : ((a.transforms || []).join("+") || "none") + (a.rows_added ? " (+" + a.rows_added + " rows)" : "") + (a.balance && a.balance !== "none" ? ", " + a.balance : ""); }
    function decision(d) { return !d ? "–" : (d.promoted ? "promoted: " : "refused: ") + d.reason; }
    var rows = [
      ["family", function (x) { return x.family + (x.imported ? " (imported)" : ""); }],
      ["trigger", function (x) { return x.trigger; }],
      ["trained at", function (x) { return time(x.created_at_ms); }],
      ["accuracy (holdout)", function (x) { return pct(x.accuracy); }],
      ["precision (macro)", function (x) { return num(x.precision, 3); }],
      ["recall (macro)", function (x) { return num(x.recall, 3); }],
      ["F1 (macro)", function (x) { return num(x.f1, 3); }],
      ["R² / RMSE", function (x) { return x.regression ? num(x.regression.r2, 3) + " / " + num(x.regression.rmse, 3) : "–"; }],
      ["training time", function (x) { return num(x.training_ms, 0) + " ms"; }],
      ["dataset (train + holdout)", function (x) { return num(x.n_samples) + " (" + num(x.n_train) + " + " + num(x.n_holdout) + ")"; }],
      ["classes (train)", function (x) { return comp(x.class_composition); }],
      ["latency p50, 1 row", function (x) { return x.predict_p50_us === null ? "–" : num(x.predict_p50_us, 0) + " µs"; }],
      ["augmentation", function (x) { return aug(x.augmentation); }],
      ["live score after deployment", function (x) { return live(x.live); }],
      ["champion/challenger", function (x) { return decision(x.decision); }],
    ];
    var head = el("tr", {}, [el("th", { text: "version" })].concat(list.map(function (x) {
      return el("th", { cls: x.serving ? "serving" : "", "data-column": String(x.version), text: "v" + x.version + (x.serving ? " (serving)" : "") });
    })));
    var body = rows.map(function (r) {
      return el("tr", {}, [el("td", { text: r[0] })].concat(list.map(function (x) {
        return el("td", { cls: x.serving ? "serving" : "", text: r[1](x) });
      })));
    });
    box.appendChild(el("table", { cls: "grid versions" }, [el("thead", {}, [head]), el("tbody", {}, body)]));

    var maps = section.querySelector('[data-role="heatmaps"]');
    maps.innerHTML = "";
    list.forEach(function (x) {
      if (!x.confusion) return;
      var labels = x.confusion.labels, m = x.confusion.matrix;
      var table = el("table", { cls: "grid heatmap", "data-version": String(x.version) }, [
        el("caption", { cls: "muted", text: "v" + x.version }),
        el("thead", {}, [el("tr", {}, [el("th", { text: "" })].concat(labels.map(function (l) { return el("th", { text: l }); })))]),
        el("tbody", {}, m.map(function (row, i) {
          var total = row.reduce(function (a, b) { return a + b; }, 0) || 1;
          return el("tr", {}, [el("th", { text: labels[i] })].concat(row.map(function (n) {
            var share = n / total;
            var bg = "rgba(37, 99, 235, " + (0.08 + 0.82 * share).toFixed(2) + ")";
            return el("td", { style: "background:" + bg + ";color:" + (share > 0.55 ? "#fff" : "#1d2330"), title: pct(share) + " of row", text: String(n) });
          })));
        })),
      ]);
      maps.appendChild(table);
    });
  }

  function renderPredictions(p) {
    var body = document.getElementById("prediction-rows");
    body.innerHTML = "";
    (p.predictions || []).slice(0, 15).forEach(function (m) {
      var probs = m.probabilities ? Object.keys(m.probabilities).map(function (k) { return k + ": " + m.probabilities[k].toFixed(2); }).join("  ") : "";
      body.appendChild(el("tr", {}, [dateTime(m.timestamp_ms), m.pipeline, m.device, num(m.sample_id), "v" + m.model_version,
        m.label !== undefined ? m.label : num(m.prediction), probs,
        m.anomaly_score === undefined ? "–" : num(m.anomaly_score, 3) + (m.anomaly ? " (alarm)" : "")].map(function (v) { return el("td", { text: v }); })));
    });
    if (!body.children.length) body.appendChild(el("tr", {}, [el("td", { colspan: "8", cls: "muted", text: "none yet (unlabelled samples of a pipeline with a prediction_topic)" })]));
  }

  function refreshPipeline(p) {
    var name = encodeURIComponent(p.name);
    var section = pipelineSection(p);
    section.querySelector('[data-role="summary"]').textContent =
      num(p.samples) + " samples stored, " + num(p.labelled_total) + " labelled; serving " + (p.serving_version ? "v" + p.serving_version : "nothing yet") +
      "; features " + p.features.join(", ") + ".";
    return Promise.all([
      api("/v1/pipelines/" + name + "/series"),
      api("/v1/pipelines/" + name + "/drift"),
      api("/v1/pipelines/" + name + "/versions"),
    ]).then(function (r) {
      renderAccuracy(section, p, r[0]);
      renderAnomaly(section, p, r[0].anomaly);
      renderDrift(section, r[1]);
      renderVersions(section, r[2]);
    });
  }

  var busy = false;
  function refresh() {
    if (busy || needToken) return;
    busy = true;
    Promise.all([
      fetch("/healthz", { cache: "no-store" }).then(function (r) { return r.json(); }).then(renderHealth),
      Promise.all([api("/v1/series/ingest"), api("/v1/stats")]).then(function (r) { renderIngest(r[0], r[1]); }),
      api("/v1/pipelines").then(function (r) { return Promise.all(r.pipelines.map(refreshPipeline)); }),
      api("/v1/predictions").then(renderPredictions),
    ]).then(function () {
      state.refreshes++;
      state.ready = true;
      document.body.dataset.ready = "true";
      document.body.dataset.refreshes = String(state.refreshes);
      document.getElementById("updated").textContent = "updated " + time(Date.now());
    }, function (e) {
      if (e instanceof AuthNeeded) {
        needToken = true;
        document.getElementById("token-button").hidden = false;
        showMessage("This daemon needs its token to show data: press “Token…”, or open /#token=… .");
      } else {
        fail(e);
      }
    }).then(function () { busy = false; });
  }

  refresh();
  setInterval(refresh, REFRESH_MS);
})();
