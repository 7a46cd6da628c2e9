// HTML report building blocks: escaping, numbers, page skeleton, element builder, sortable tables.
#include "common/html.hpp"

#include <cstdio>

namespace twinstep::html {
namespace {

constexpr const char* kBaseStyle = R"(
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px auto; max-width: 1150px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin-bottom: 2px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { padding: 3px 8px; border-bottom: 1px solid #eee; text-align: right; }
th:first-child, td:first-child, td.name { text-align: left; }
td.name { font-family: ui-monospace, monospace; }
.chart { display: block; margin: 8px 0; font-size: 12px; }
.note { color: #666; }
)";

constexpr const char* kSortScript = R"(<script>
document.querySelectorAll('table.sortable').forEach(function (table) {
  var head = table.rows[0];
  Array.prototype.forEach.call(head.cells, function (th, col) {
    th.addEventListener('click', function () {
      var asc = th.getAttribute('data-sort') !== 'asc';
      Array.prototype.forEach.call(head.cells, function (h) { h.removeAttribute('data-sort'); });
      th.setAttribute('data-sort', asc ? 'asc' : 'desc');
      var key = function (row) {
        var c = row.cells[col];
        if (!c) return null;
        var v = c.hasAttribute('data-v') ? c.getAttribute('data-v') : c.textContent;
        if (v === '') return null;
        var n = Number(v);
        return isNaN(n) ? v : n;
      };
      var rows = Array.prototype.slice.call(table.rows, 1);
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) return (x === null) - (y === null);
        var d = typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y));
        return asc ? d : -d;
      });
      rows.forEach(function (r) { r.parentNode.appendChild(r); });
    });
  });
});
</script>
)";

}  // namespace

std::string escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char ch : text) {
    switch (ch) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += ch;
    }
  }
  return out;
}

std::string format(const char* printf_format, double value) {
  char buf[64];
  std::snprintf(buf, sizeof buf, printf_format, value);
  return buf;
}

std::string px(double value) { return format("%.1f", value); }

std::string page_begin(std::string_view title, std::string_view extra_style) {
  const std::string t = escape(title);
  std::string out = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>" + t +
                    "</title>\n<style>" + kBaseStyle;
  out += extra_style;
  out += "</style>\n</head>\n<body>\n<h1>" + t + "</h1>\n";
  return out;
}

std::string page_end() { return "</body>\n</html>\n"; }

std::string table_begin(std::string_view id, const std::vector<std::string>& headers, std::string_view cls) {
  std::string out = "<table";
  if (!id.empty()) out += " id=\"" + escape(id) + "\"";
  if (!cls.empty()) out += " class=\"" + escape(cls) + "\"";
  out += "><tr>";
  for (const auto& h : headers) out += "<th>" + escape(h) + "</th>";
  return out + "</tr>\n";
}

Tag::Tag(std::string_view name) : name_(name) {}

Tag& Tag::attr(std::string_view name, std::string_view value) {
  attrs_ += ' ';
  attrs_ += name;
  attrs_ += "=\"" + escape(value) + "\"";
  return *this;
}

Tag& Tag::text(std::string_view text) {
  content_ += escape(text);
  return *this;
}

Tag& Tag::raw(std::string_view markup) {
  content_ += markup;
  return *this;
}

Tag& Tag::title(std::string_view tooltip) {
  content_ += "<title>" + escape(tooltip) + "</title>";
  return *this;
}

std::string Tag::str() const {
  if (content_.empty()) return "<" + name_ + attrs_ + "/>";
  return "<" + name_ + attrs_ + ">" + content_ + "</" + name_ + ">";
}

Tag svg_text(double x, double y, std::string_view anchor) {
  Tag t("text");
  t.attr("x", px(x)).attr("y", px(y));
  if (!anchor.empty()) t.attr("text-anchor", anchor);
  return t;
}

Tag svg_rect(double x, double y, double width, double height, std::string_view fill) {
  Tag t("rect");
  t.attr("x", px(x)).attr("y", px(y)).attr("width", px(width)).attr("height", px(height)).attr("fill", fill);
  return t;
}

Tag svg_line(double x1, double y1, double x2, double y2, std::string_view stroke) {
  Tag t("line");
  t.attr("x1", px(x1)).attr("y1", px(y1)).attr("x2", px(x2)).attr("y2", px(y2)).attr("stroke", stroke);
  return t;
}

Tag svg_circle(double cx, double cy, std::string_view r, std::string_view fill) {
  Tag t("circle");
  t.attr("cx", px(cx)).attr("cy", px(cy)).attr("r", r).attr("fill", fill);
  return t;
}

std::string svg_chart(std::string_view id, double width, double height, std::string_view body) {
  std::string b = "\n";
  b += body;
  return Tag("svg")
             .attr("class", "chart")
             .attr("id", id)
             .attr("xmlns", "http://www.w3.org/2000/svg")
             .attr("width", px(width))
             .attr("height", px(height))
             .attr("viewBox", "0 0 " + px(width) + " " + px(height))
             .attr("role", "img")
             .raw(b)
             .str() +
         "\n";
}

std::string sortable_tables_script() { return kSortScript; }

}  // namespace twinstep::html
