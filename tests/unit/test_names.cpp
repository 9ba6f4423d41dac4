// names.hpp: UTF-8 validation, entry name rules, symlink target rules.
#include <doctest/doctest.h>

#include <string>

#include "helpers.hpp"
#include "torshpkg/names.hpp"

using namespace torshpkg;
using namespace std::string_literals;

TEST_SUITE("names") {

TEST_CASE("valid_utf8 accepts well-formed text") {
  CHECK(valid_utf8(""));
  CHECK(valid_utf8("plain ascii ~!@#$%^&*()"));
  CHECK(valid_utf8("a\0b"s));                // NUL is a valid code point (names reject it separately)
  CHECK(valid_utf8("\x7f"));                 // DEL, last 1-byte code point
  CHECK(valid_utf8("\xc2\x80"));             // U+0080, first 2-byte
  CHECK(valid_utf8("\xc3\xa9t\xc3\xa9"));    // été
  CHECK(valid_utf8("\xdf\xbf"));             // U+07FF, last 2-byte
  CHECK(valid_utf8("\xe0\xa0\x80"));         // U+0800, first 3-byte
  CHECK(valid_utf8("\xe2\x82\xac"));         // €
  CHECK(valid_utf8("\xe6\x97\xa5\xe6\x9c\xac"));  // 日本
  CHECK(valid_utf8("\xed\x9f\xbf"));         // U+D7FF, just below the surrogates
  CHECK(valid_utf8("\xee\x80\x80"));         // U+E000, just above the surrogates
  CHECK(valid_utf8("\xef\xbf\xbf"));         // U+FFFF
  CHECK(valid_utf8("\xf0\x90\x80\x80"));     // U+10000, first 4-byte
  CHECK(valid_utf8("\xf0\x9f\x98\x80"));     // 😀
  CHECK(valid_utf8("x\xf0\x9f\x98\x80y"));
  CHECK(valid_utf8("\xf4\x8f\xbf\xbf"));     // U+10FFFF, the last code point
}

TEST_CASE("valid_utf8 rejects overlong forms") {
  CHECK_FALSE(valid_utf8("\xc0\x80"));          // NUL, overlong
  CHECK_FALSE(valid_utf8("\xc0\xaf"));          // '/', overlong
  CHECK_FALSE(valid_utf8("\xc1\xbf"));
  CHECK_FALSE(valid_utf8("\xe0\x80\x80"));
  CHECK_FALSE(valid_utf8("\xe0\x80\xaf"));      // '/', 3-byte overlong
  CHECK_FALSE(valid_utf8("\xe0\x9f\xbf"));      // U+07FF as 3 bytes
  CHECK_FALSE(valid_utf8("\xf0\x80\x80\x80"));
  CHECK_FALSE(valid_utf8("\xf0\x80\x80\xaf"));  // '/', 4-byte overlong
  CHECK_FALSE(valid_utf8("\xf0\x8f\xbf\xbf"));  // U+FFFF as 4 bytes
}

TEST_CASE("valid_utf8 rejects surrogates") {
  CHECK_FALSE(valid_utf8("\xed\xa0\x80"));  // U+D800
  CHECK_FALSE(valid_utf8("\xed\xad\xbf"));  // U+DB7F
  CHECK_FALSE(valid_utf8("\xed\xb0\x80"));  // U+DC00
  CHECK_FALSE(valid_utf8("\xed\xbf\xbf"));  // U+DFFF
  CHECK_FALSE(valid_utf8("\xed\xa0\xbd\xed\xb8\x80"));  // CESU-8 pair for U+1F600
}

TEST_CASE("valid_utf8 rejects code points beyond U+10FFFF and invalid lead bytes") {
  CHECK_FALSE(valid_utf8("\xf4\x90\x80\x80"));  // U+110000
  CHECK_FALSE(valid_utf8("\xf5\x80\x80\x80"));
  CHECK_FALSE(valid_utf8("\xf7\xbf\xbf\xbf"));
  CHECK_FALSE(valid_utf8("\xf8\x88\x80\x80\x80"));  // 5-byte form
  CHECK_FALSE(valid_utf8("\xfc\x84\x80\x80\x80\x80"));  // 6-byte form
  CHECK_FALSE(valid_utf8("\xfe"));
  CHECK_FALSE(valid_utf8("\xff"));
  CHECK_FALSE(valid_utf8("\x80"));     // lone continuation byte
  CHECK_FALSE(valid_utf8("a\xbf" "b"));
}

TEST_CASE("valid_utf8 rejects truncated sequences and bad continuations") {
  CHECK_FALSE(valid_utf8("\xc3"));
  CHECK_FALSE(valid_utf8("abc\xc3"));
  CHECK_FALSE(valid_utf8("\xe2\x82"));
  CHECK_FALSE(valid_utf8("\xe2"));
  CHECK_FALSE(valid_utf8("\xf0\x9f\x98"));
  CHECK_FALSE(valid_utf8("\xf0\x9f"));
  CHECK_FALSE(valid_utf8("\xf0"));
  CHECK_FALSE(valid_utf8("\xc3\x28"));          // continuation is ASCII
  CHECK_FALSE(valid_utf8("\xe2\x28\xa1"));
  CHECK_FALSE(valid_utf8("\xe2\x82\x28"));
  CHECK_FALSE(valid_utf8("\xf0\x28\x8c\xbc"));
  CHECK_FALSE(valid_utf8("\xf0\x9f\x98\x28"));
  CHECK_FALSE(valid_utf8("\xc3\xc3\xa9"));      // a lead byte where a continuation belongs
  CHECK_FALSE(valid_utf8("\xe2\x82\xac\xe2\x82"));  // valid then truncated
  // A sequence cut off by the end of the view, with valid continuation bytes in the memory after it.
  const std::string full = "\xe2\x82\xac";
  CHECK_FALSE(valid_utf8(std::string_view(full).substr(0, 2)));
  CHECK(valid_utf8(std::string_view(full)));
}

TEST_CASE("name_problem: every rule") {
  CHECK_FALSE(name_problem("a").has_value());
  CHECK_FALSE(name_problem("model.safetensors").has_value());
  CHECK_FALSE(name_problem("...").has_value());
  CHECK_FALSE(name_problem(".hidden").has_value());
  CHECK_FALSE(name_problem("..x").has_value());
  CHECK_FALSE(name_problem("with space").has_value());
  CHECK_FALSE(name_problem("back\\slash").has_value());
  CHECK_FALSE(name_problem("\xc3\xa9t\xc3\xa9").has_value());
  CHECK_FALSE(name_problem("\xf0\x9f\x98\x80").has_value());
  CHECK_FALSE(name_problem(std::string(255, 'a')).has_value());

  auto why = [](std::string_view n) { return name_problem(n).value_or("<none>"); };
  CHECK(th::contains(why(""), "empty"));
  CHECK(th::contains(why("."), "'.'"));
  CHECK(th::contains(why(".."), "'..'"));
  CHECK(th::contains(why(std::string(256, 'a')), "255"));
  CHECK(th::contains(why(std::string(1000, 'b')), "255"));
  CHECK(th::contains(why("a/b"), "'/'"));
  CHECK(th::contains(why("/"), "'/'"));
  CHECK(th::contains(why("a/"), "'/'"));
  CHECK(th::contains(why("../x"), "'/'"));
  CHECK(th::contains(why("a\0b"s), "NUL"));
  CHECK(th::contains(why("\0"s), "NUL"));
  CHECK(th::contains(why("\xff"), "UTF-8"));
  CHECK(th::contains(why("caf\xe9"), "UTF-8"));     // Latin-1 é
  CHECK(th::contains(why("\xed\xa0\x80"), "UTF-8"));  // surrogate
  CHECK(th::contains(why("\xc0\xaf"), "UTF-8"));      // overlong '/'

  // The 255-byte limit counts bytes, not characters.
  std::string euros;
  for (int i = 0; i < 85; ++i) euros += "\xe2\x82\xac";
  CHECK(euros.size() == 255);
  CHECK_FALSE(name_problem(euros).has_value());
  euros += "\xe2\x82\xac";
  CHECK(name_problem(euros).has_value());
}

TEST_CASE("symlink_problem: every rule") {
  CHECK_FALSE(symlink_problem("target").has_value());
  CHECK_FALSE(symlink_problem("../up/and/over").has_value());
  CHECK_FALSE(symlink_problem("/absolute/path").has_value());
  CHECK_FALSE(symlink_problem("\xff\xfe not utf8 is fine").has_value());
  CHECK_FALSE(symlink_problem(std::string(4095, 'x')).has_value());
  auto why = [](std::string_view t) { return symlink_problem(t).value_or("<none>"); };
  CHECK(th::contains(why(""), "empty"));
  CHECK(th::contains(why(std::string(4096, 'x')), "4095"));
  CHECK(th::contains(why("a\0b"s), "NUL"));
  CHECK(th::contains(why("\0"s), "NUL"));
}

}  // TEST_SUITE
