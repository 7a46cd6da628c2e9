// The HTML report building blocks: escaping, the element builder (attribute order kept, every value escaped),
// the page skeleton and table heads.
#include "common/html.hpp"

#include <string>

#include "tests/catch.hpp"

namespace html = twinstep::html;

TEST_CASE("html::escape: the five special characters", "[common]") {
  CHECK(html::escape("a<b>&\"c'") == "a&lt;b&gt;&amp;&quot;c&#39;");
  CHECK(html::escape("plain L3.mb2.fwd") == "plain L3.mb2.fwd");
  CHECK(html::escape("").empty());
}

TEST_CASE("html::Tag: attributes in order, values, text and tooltips escaped", "[common]") {
  CHECK(html::Tag("rect").attr("x", html::px(1.25)).attr("fill", "#333").str() == "<rect x=\"1.2\" fill=\"#333\"/>");
  CHECK(html::Tag("text").attr("class", "a\"b").text("<x>").str() == "<text class=\"a&quot;b\">&lt;x&gt;</text>");
  CHECK(html::Tag("circle").attr("r", "2").title("op <1> & 2").str() ==
        "<circle r=\"2\"><title>op &lt;1&gt; &amp; 2</title></circle>");
  CHECK(html::Tag("g").raw("<rect/>").text("&").str() == "<g><rect/>&amp;</g>");
  CHECK(html::format("%+.1f%%", 12.34) == "+12.3%");
}

TEST_CASE("html::page_begin and table_begin: one skeleton, titles and headers escaped", "[common]") {
  const std::string page = html::page_begin("a <b>", ".x { color: red; }\n") + html::page_end();
  CHECK(page.rfind("<!DOCTYPE html>\n", 0) == 0);
  CHECK(page.find("<title>a &lt;b&gt;</title>") != std::string::npos);
  CHECK(page.find("<h1>a &lt;b&gt;</h1>") != std::string::npos);
  CHECK(page.find(".x { color: red; }\n</style>") != std::string::npos);
  CHECK(page.find("<script") == std::string::npos);
  CHECK(page.size() >= 16);
  CHECK(page.substr(page.size() - 16) == "</body>\n</html>\n");
  CHECK(html::table_begin("t", {"a", "<b>"}) == "<table id=\"t\"><tr><th>a</th><th>&lt;b&gt;</th></tr>\n");
  CHECK(html::table_begin("", {"a"}) == "<table><tr><th>a</th></tr>\n");
  CHECK(html::sortable_tables_script().find("table.sortable") != std::string::npos);
}
