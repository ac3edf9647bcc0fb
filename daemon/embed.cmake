# Turns a file into a C header holding its bytes, for the page at GET /
# (daemon/page.html -> metrics_page.h). Run as
#   cmake -DINPUT=page.html -DOUTPUT=metrics_page.h -DNAME=metrics_page -P embed.cmake
# The output depends on the input's bytes alone (no date, no path), so the
# build stays reproducible.
file(READ "${INPUT}" hex HEX)
string(LENGTH "${hex}" nhex)
math(EXPR len "${nhex} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
# Sixteen bytes a line keeps the generated file readable.
string(REPEAT "0x..," 16 line)
string(REGEX REPLACE "(${line})" "\\1\n    " bytes "${bytes}")
file(WRITE "${OUTPUT}.tmp"
  "/* Generated from ${NAME}'s source by daemon/embed.cmake; do not edit. */\n"
  "static const char ${NAME}[] = {\n    ${bytes}0x00};\n"
  "static const size_t ${NAME}_len = ${len};\n")
configure_file("${OUTPUT}.tmp" "${OUTPUT}" COPYONLY)
file(REMOVE "${OUTPUT}.tmp")
