// The pieces every self-contained HTML report is made of (`twinstep compare --report`, `twinstep sweep --report`):
// escaping, fixed-precision numbers, the page skeleton with the shared style, table heads, an SVG/HTML element
// builder that escapes every value it is given, and a sortable-table script. No external resources: a report is
// one file that opens anywhere. Fixed number formats: the same input gives the same bytes.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace twinstep::html {

/// Escapes & < > " ' for HTML text and attribute values.
[[nodiscard]] std::string escape(std::string_view text);

/// `value` printed with a printf format for one double ("%.1f", "%+.2f%%").
[[nodiscard]] std::string format(const char* printf_format, double value);

/// An SVG coordinate: one decimal ("12.5").
[[nodiscard]] std::string px(double value);

/// "<!DOCTYPE html>...<body>\n<h1>title</h1>\n": the document head with the shared style (body, headings, tables,
/// .chart, .note) followed by `extra_style` (rules of one report), and the page title as the first heading.
[[nodiscard]] std::string page_begin(std::string_view title, std::string_view extra_style = {});

/// "</body>\n</html>\n".
[[nodiscard]] std::string page_end();

/// `<table id="id" class="cls"><tr><th>h1</th>...</tr>\n` (headers escaped; no id or class attribute when empty).
[[nodiscard]] std::string table_begin(std::string_view id, const std::vector<std::string>& headers,
                                      std::string_view cls = {});

/// One element: a tag, attributes in the order they are added (values escaped), then either nothing (written
/// self-closing, `<rect .../>`), or content: escaped text, trusted markup, and a `<title>` tooltip child.
///   Tag("rect").attr("x", px(x)).attr("fill", "#333").title("compute: 1.2 ms").str()
class Tag {
 public:
  explicit Tag(std::string_view name);
  Tag& attr(std::string_view name, std::string_view value);
  /// Appends escaped text to the content.
  Tag& text(std::string_view text);
  /// Appends markup as it is (built by other Tags or fixed strings: never input data).
  Tag& raw(std::string_view markup);
  /// Appends a `<title>` child, the tooltip browsers show on hover.
  Tag& title(std::string_view tooltip);
  [[nodiscard]] std::string str() const;

 private:
  std::string name_, attrs_, content_;
};

/// SVG shapes at coordinates printed with px(), as Tags to add more attributes (class, stroke), text or a tooltip.
[[nodiscard]] Tag svg_text(double x, double y, std::string_view anchor = {});  ///< text-anchor when not empty.
[[nodiscard]] Tag svg_rect(double x, double y, double width, double height, std::string_view fill);
[[nodiscard]] Tag svg_line(double x1, double y1, double x2, double y2, std::string_view stroke);
[[nodiscard]] Tag svg_circle(double cx, double cy, std::string_view r, std::string_view fill);

/// A chart: `<svg class="chart" id=... xmlns=... width height viewBox role="img">`, a newline, `body` (markup
/// built with the Tags above), `</svg>` and a newline.
[[nodiscard]] std::string svg_chart(std::string_view id, double width, double height, std::string_view body);

/// Makes every `<table class="sortable">` of the page sortable by clicking a header (again: reversed order). A cell
/// sorts by its `data-v` attribute when it has one (numbers: use it for formatted values such as "1.2 ms"), else by
/// its text; cells without a value (empty `data-v`) go last in both orders. Plain inline JavaScript, no library.
[[nodiscard]] std::string sortable_tables_script();

}  // namespace twinstep::html
