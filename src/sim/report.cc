#include "eplb/sim/report.h"

#include <nlohmann/json.hpp>

namespace eplb {
namespace {

// The page's script: draws everything from the JSON in #eplb-data.
constexpr std::string_view kScript = R"JS(
(function () {
  const d = JSON.parse(document.getElementById('eplb-data').textContent);
  const NS = 'http://www.w3.org/2000/svg';
  const el = (tag, attrs, text) => {
    const e = tag.startsWith('svg:') ? document.createElementNS(NS, tag.slice(4))
                                     : document.createElement(tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = String(text);
    return e;
  };
  const main = document.getElementById('main');
  const section = (title) => {
    main.appendChild(el('h2', {}, title));
    const div = el('div');
    main.appendChild(div);
    return div;
  };
  const fmt = (x, n) => Number(x).toFixed(n === undefined ? 3 : n);
  document.getElementById('title').textContent = d.title;

  // Summary.
  const t = el('table');
  const head = el('tr');
  ['', 'no balancing', d.column].forEach(h => head.appendChild(el('th', {}, h)));
  t.appendChild(head);
  d.summary.forEach(row => {
    const tr = el('tr');
    row.forEach(c => tr.appendChild(el('td', {}, c)));
    t.appendChild(tr);
  });
  section('Summary').appendChild(t);

  // A chart frame with labelled axes; returns [svg, x(), y()].
  const frame = (parent, w, h, xmax, ymin, ymax, xlabel, ylabel) => {
    const L = 60, B = 40, T = 10, R = 10;
    const svg = el('svg:svg', {width: w, height: h, role: 'img'});
    const x = v => L + (w - L - R) * (xmax > 0 ? v / xmax : 0);
    const y = v => T + (h - T - B) * (1 - (v - ymin) / (ymax - ymin || 1));
    svg.appendChild(el('svg:rect', {x: L, y: T, width: w - L - R, height: h - T - B,
                                    fill: 'none', stroke: '#999'}));
    for (let i = 0; i <= 4; ++i) {
      const v = ymin + (ymax - ymin) * i / 4;
      svg.appendChild(el('svg:text', {x: L - 5, y: y(v) + 4, 'text-anchor': 'end',
                                      'font-size': 11}, fmt(v, 2)));
      const xv = xmax * i / 4;
      svg.appendChild(el('svg:text', {x: x(xv), y: h - B + 15, 'text-anchor': 'middle',
                                      'font-size': 11}, Math.round(xv)));
    }
    svg.appendChild(el('svg:text', {x: (L + w - R) / 2, y: h - 5, 'text-anchor': 'middle',
                                    'font-size': 12}, xlabel));
    svg.appendChild(el('svg:text', {x: 12, y: (T + h - B) / 2, 'text-anchor': 'middle',
                                    'font-size': 12,
                                    transform: `rotate(-90 12 ${(T + h - B) / 2})`}, ylabel));
    parent.appendChild(svg);
    return [svg, x, y];
  };
  const line = (svg, x, y, values, color, width, dash) => {
    const pts = values.map((v, i) => `${x(i)},${y(v)}`).join(' ');
    svg.appendChild(el('svg:polyline', {points: pts, fill: 'none', stroke: color,
                                        'stroke-width': width,
                                        'stroke-dasharray': dash || ''}));
  };
  const legend = (parent, items) => {
    const p = el('p', {class: 'legend'});
    items.forEach(([color, label]) => {
      p.appendChild(el('span', {style: `color:${color}`}, '\u25A0 '));
      p.appendChild(el('span', {}, label + '   '));
    });
    parent.appendChild(p);
  };

  // Imbalance over steps, a rolling median, commit markers.
  {
    const s = section('Realized imbalance per step (max / mean rank load, mean over layers)');
    const all = d.imbalance.concat(d.baseline);
    const hi = Math.max(1.1, ...all), n = Math.max(1, d.imbalance.length - 1);
    const [svg, x, y] = frame(s, 960, 340, n, 1.0, hi, 'replay step', 'max / mean');
    const k = 9, med = d.imbalance.map((_, i) => {
      const w = d.imbalance.slice(Math.max(0, i - k + 1), i + 1).slice().sort((a, b) => a - b);
      return w[Math.floor(w.length / 2)];
    });
    d.commits.forEach((c, i) => {
      if (c > 0) {
        const m = el('svg:line', {x1: x(i), x2: x(i), y1: y(1.0), y2: y(1.0) - 8,
                                  stroke: '#2a2', 'stroke-width': 2});
        m.appendChild(el('svg:title', {}, `step ${i}: ${c} layer(s) committed`));
        svg.appendChild(m);
      }
    });
    line(svg, x, y, d.baseline, '#c33', 1.2);
    line(svg, x, y, d.imbalance, '#36c', 1.2);
    line(svg, x, y, med, '#013', 2, '5,3');
    legend(s, [['#c33', 'no balancing'], ['#36c', d.column],
               ['#013', `${d.column}, rolling median of ${k} steps`],
               ['#2a2', 'layers committed (marks on the axis)']]);
  }

  // Rank x layer load before and after.
  {
    const s = section('Rank load per layer (mean over steps of rank load / mean rank load)');
    const R = d.ranks, Lr = d.layers;
    const hi = Math.max(1.01, ...d.load, ...d.baseline_load);
    const color = v => {
      const a = Math.min(1, Math.abs(v - 1) / Math.max(0.01, hi - 1));
      return v >= 1 ? `rgb(255,${Math.round(255 * (1 - a))},${Math.round(255 * (1 - a))})`
                    : `rgb(${Math.round(255 * (1 - a))},${Math.round(255 * (1 - a))},255)`;
    };
    [['no balancing', d.baseline_load], [d.column, d.load]].forEach(([name, v]) => {
      const cell = Math.max(4, Math.min(24, Math.floor(440 / Math.max(R, 1))));
      const h = Math.max(4, Math.min(14, Math.floor(360 / Math.max(Lr, 1))));
      const svg = el('svg:svg', {width: 60 + cell * R, height: 40 + h * Lr, role: 'img'});
      svg.appendChild(el('svg:text', {x: 60, y: 12, 'font-size': 12}, name));
      svg.appendChild(el('svg:text', {x: 60 + cell * R / 2, y: 36 + h * Lr,
                                      'text-anchor': 'middle', 'font-size': 11}, 'rank'));
      svg.appendChild(el('svg:text', {x: 10, y: 20 + h * Lr / 2, 'font-size': 11,
                                      transform: `rotate(-90 10 ${20 + h * Lr / 2})`}, 'layer'));
      for (let l = 0; l < Lr; ++l) {
        for (let r = 0; r < R; ++r) {
          const val = v[l * R + r];
          const c = el('svg:rect', {x: 60 + r * cell, y: 18 + l * h, width: cell, height: h,
                                    fill: color(val)});
          c.appendChild(el('svg:title', {}, `layer ${l}, rank ${r}: ${fmt(val)}`));
          svg.appendChild(c);
        }
      }
      s.appendChild(svg);
    });
    legend(s, [['rgb(255,80,80)', `above the mean (up to ${fmt(hi, 2)})`],
               ['rgb(80,80,255)', 'below the mean']]);
  }

  // Moves and bytes per rebalance.
  {
    const s = section('Experts and bytes moved per rebalance');
    const n = d.moves.length;
    if (n === 0) {
      s.appendChild(el('p', {}, 'No rebalance.'));
    } else {
      const hi = Math.max(1, ...d.moves);
      const [svg, x, y] = frame(s, 960, 260, n, 0, hi, 'rebalance', 'experts moved');
      d.moves.forEach((m, i) => {
        const b = el('svg:rect', {x: x(i) + 1, y: y(m), width: Math.max(1, x(1) - x(0) - 2),
                                  height: y(0) - y(m), fill: '#69c'});
        b.appendChild(el('svg:title', {},
                         `rebalance ${i + 1}: ${m} experts, ${fmt(d.bytes[i] / 1e9, 2)} GB`));
        svg.appendChild(b);
      });
      const total = d.bytes.reduce((a, b) => a + b, 0);
      s.appendChild(el('p', {}, `${n} rebalances, ${fmt(total / 1e9, 2)} GB moved in all ` +
                                '(bytes at the model\'s real size; hover a bar for its bytes).'));
    }
  }

  // Plan time against its budget.
  {
    const s = section('Plan time against its budget');
    const n = d.plan_ms.length;
    if (n === 0) {
      s.appendChild(el('p', {}, 'No plan taken.'));
    } else {
      const hi = Math.max(d.budget_ms * 1.2, ...d.plan_ms, 0.001);
      const [svg, x, y] = frame(s, 960, 260, n, 0, hi, 'plan', 'ms on the planner thread');
      d.plan_ms.forEach((m, i) => {
        const b = el('svg:rect', {x: x(i) + 1, y: y(m), width: Math.max(1, x(1) - x(0) - 2),
                                  height: y(0) - y(m),
                                  fill: d.plan_late[i] ? '#c33' : '#6a6'});
        b.appendChild(el('svg:title', {},
                         `plan ${i + 1} at step ${d.plan_steps[i]}: ${fmt(m, 2)} ms` +
                         (d.plan_late[i] ? ' (late)' : '')));
        svg.appendChild(b);
      });
      svg.appendChild(el('svg:line', {x1: x(0), x2: x(n), y1: y(d.budget_ms), y2: y(d.budget_ms),
                                      stroke: '#000', 'stroke-dasharray': '6,3'}));
      legend(s, [['#6a6', 'on time'], ['#c33', 'late'],
                 ['#000', `budget ${fmt(d.budget_ms, 2)} ms (algorithm interval x mean step)`]]);
      s.appendChild(el('p', {}, `Late cycles: ${d.plan_late.filter(v => v).length} of ${n}.`));
    }
  }
  document.body.dataset.rendered = 'ok';
})();
)JS";

std::string Fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

}  // namespace

std::string ReplayReportHtml(const ReplayResult& r, const ReplayOptions& o,
                             std::string_view title, std::string_view column) {
  nlohmann::json d;
  d["title"] = title;
  d["column"] = column;
  d["imbalance"] = r.imbalance_per_step;
  d["baseline"] = r.baseline_imbalance_per_step;
  d["commits"] = r.commits_per_step;
  d["ranks"] = r.report_ranks;
  d["layers"] = o.model.num_moe_layers;
  d["load"] = r.rank_layer_load;
  d["baseline_load"] = r.baseline_rank_layer_load;
  d["moves"] = r.experts_moved_by_rebalance;
  d["bytes"] = r.bytes_moved_by_rebalance;
  d["plan_steps"] = r.plan_steps;
  d["plan_ms"] = r.plan_ms;
  std::vector<int> late(r.plan_late.begin(), r.plan_late.end());
  d["plan_late"] = late;
  d["budget_ms"] = r.plan_budget_ms;
  d["summary"] = nlohmann::json::array(
      {{"imbalance median / p90",
        Fixed(r.baseline_imbalance.median, 3) + " / " +
            Fixed(r.baseline_imbalance.p90, 3),
        Fixed(r.imbalance.median, 3) + " / " + Fixed(r.imbalance.p90, 3)},
       {"TTFT p99 (cost model)", Fixed(r.baseline_ttft_p99_ms, 2) + " ms",
        Fixed(r.ttft_p99_ms, 2) + " ms"},
       {"TPOT avg (cost model)", Fixed(r.baseline_tpot_avg_ms, 2) + " ms",
        Fixed(r.tpot_avg_ms, 2) + " ms"},
       {"device utilization", Fixed(100 * r.baseline_utilization, 1) + "%",
        Fixed(100 * r.utilization, 1) + "%"},
       {"rebalances", "-", std::to_string(r.rebalances)},
       {"experts moved", "0", std::to_string(r.experts_moved)},
       {"late cycles", "-", std::to_string(r.cycles_late)},
       {"max stall", "-", Fixed(r.max_stall_ms, 2) + " ms"}});
  // Invalid UTF-8 from outside is replaced, not an error; '<', '>' and '&'
  // are written as \u escapes so that nothing in the data can end the
  // script element.
  std::string json =
      d.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  std::string safe;
  safe.reserve(json.size());
  for (char c : json) {
    if (c == '<') {
      safe += "\\u003c";
    } else if (c == '>') {
      safe += "\\u003e";
    } else if (c == '&') {
      safe += "\\u0026";
    } else {
      safe += c;
    }
  }
  return std::string(
             "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             "<title>eplb replay</title><style>body{font-family:sans-serif;"
             "margin:2em;max-width:1000px}td,th{padding:4px 12px;text-align:"
             "right}td:first-child{text-align:left}svg{display:block;margin:"
             "8px 0}.legend span{margin-right:4px}</style></head>\n<body>"
             "<h1>eplb replay</h1><p id=\"title\"></p><div id=\"main\"></div>\n"
             "<script type=\"application/json\" id=\"eplb-data\">") +
         safe + "</script>\n<script>" + std::string(kScript) +
         "</script>\n</body></html>\n";
}

}  // namespace eplb
