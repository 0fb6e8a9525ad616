// The dashboard's charts, drawn with uPlot (vendored) from the page's own data: the JSON block
// #usage-data holds the days of the range, as the admin API's usage endpoint gives them. Every
// figure is also in the page's tables, so nothing is lost with scripts off.
(function () {
  "use strict";
  var block = document.getElementById("usage-data");
  if (!block || typeof uPlot === "undefined") { return; }
  var days = JSON.parse(block.textContent);
  var xs = days.map(function (d) { return Date.parse(d.day + "T00:00:00Z") / 1000; });
  var colours = ["#2456c7", "#d1495b", "#00798c", "#edae49", "#66a182", "#8d6a9f", "#30638e",
                 "#a4161a"];
  var DAY = 86400;
  var DAY_STEPS = [DAY, 2 * DAY, 7 * DAY, 14 * DAY, 28 * DAY, 91 * DAY];
  function dayLabels(u, splits) {
    return splits.map(function (ts) { return new Date(ts * 1000).toISOString().slice(5, 10); });
  }
  function sum(d, names) { return names.reduce(function (n, k) { return n + d[k]; }, 0); }
  function pct(v) { return v === null ? null : Math.round(v * 1000) / 10; }

  function chart(id, series) {
    var box = document.getElementById(id);
    if (!box) { return; }
    var opts = {
      title: box.dataset.title, width: Math.max(320, box.clientWidth || 640), height: 220,
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); },
      scales: { x: { time: true } },
      axes: [{ incrs: DAY_STEPS, values: dayLabels }, {}],
      series: [{}].concat(series.map(function (s, i) {
        return { label: s.label, stroke: colours[i % colours.length], width: 2,
                 points: { show: days.length <= 31 } };
      })),
    };
    var data = [xs].concat(series.map(function (s) { return days.map(s.value); }));
    new uPlot(opts, data, box);
    box.setAttribute("data-drawn", "1");
  }

  chart("chart-users", [{ label: "Active users", value: function (d) { return d.active_users; } }]);
  chart("chart-inline", [
    { label: "Shown", value: function (d) { return d.Inline_SuggestionsCount; } },
    { label: "Accepted", value: function (d) { return d.Inline_AcceptanceCount; } },
  ]);
  chart("chart-rate", [
    { label: "By suggestions", value: function (d) { return pct(d.rates.inline_acceptance_rate); } },
    { label: "By lines", value: function (d) { return pct(d.rates.inline_line_acceptance_rate); } },
  ]);
  var features = [
    ["Inline", ["Inline_AICodeLines"]], ["Chat", ["Chat_AICodeLines"]],
    ["Inline chat", ["InlineChat_AcceptedLineAdditions"]], ["/dev", ["Dev_AcceptedLines"]],
    ["/test", ["TestGeneration_AcceptedLines"]],
    ["/doc", ["DocGeneration_AcceptedLineAdditions", "DocGeneration_AcceptedLineUpdates"]],
    ["Code fix", ["CodeFix_AcceptedLines"]], ["/transform", ["Transformation_LinesGenerated"]],
  ];
  chart("chart-lines", features.map(function (f) {
    return { label: f[0], value: function (d) { return sum(d, f[1]); } };
  }));
  chart("chart-chat", [
    { label: "Sent", value: function (d) { return d.Chat_MessagesSent; } },
    { label: "Interacted with", value: function (d) { return d.Chat_MessagesInteracted; } },
  ]);
}());
