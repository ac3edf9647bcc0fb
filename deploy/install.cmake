# Install rules and the Debian package (CPack DEB) for fetchd.
#
# Included from the top-level CMakeLists.txt after the fetchd and fetchctl
# targets are defined. `cmake --install build --prefix /usr` installs the
# binaries, the systemd units, the sysusers snippet, the default config, the
# man pages and the bash completion; `cpack -G DEB` (in the build directory)
# packages the same files.

include(GNUInstallDirs)

foreach(target fetchd fetchctl)
  if(NOT TARGET ${target})
    message(FATAL_ERROR "deploy/install.cmake: include it after the ${target} target is defined")
  endif()
endforeach()

# The systemd directories: fixed Debian bookworm defaults, the same on every
# host, so the package holds the same files whether or not this machine has
# systemd (and its systemd.pc) installed. Bookworm's systemd.pc names
# /lib/systemd/system for units and /usr/lib/sysusers.d for sysusers.d.
# -DFETCHD_SYSTEMD_UNIT_DIR=... and -DFETCHD_SYSUSERS_DIR=... override them.
set(_fetchd_unit_default "/lib/systemd/system")
set(_fetchd_sysusers_default "/usr/lib/sysusers.d")
# Build directories configured before these defaults were fixed cached what
# pkg-config systemd (or a prefix-relative fallback) found on that machine;
# such a value is not the user's choice and must not outlive a reconfigure.
# The marker says that the cached values were set by these rules or by -D.
if(NOT DEFINED _FETCHD_SYSTEMD_DIRS_V2)
  foreach(_var FETCHD_SYSTEMD_UNIT_DIR FETCHD_SYSUSERS_DIR)
    get_property(_help CACHE ${_var} PROPERTY HELPSTRING)
    if(DEFINED CACHE{${_var}} AND _help MATCHES "^Where the ")
      message(STATUS "fetchd: dropping ${_var}=${${_var}} cached by an older configure")
      unset(${_var} CACHE)
    endif()
  endforeach()
endif()
set(_FETCHD_SYSTEMD_DIRS_V2 ON CACHE INTERNAL "fetchd: the systemd directories are host-independent")
set(FETCHD_SYSTEMD_UNIT_DIR "${_fetchd_unit_default}" CACHE PATH
    "The systemd system unit directory (default: Debian bookworm's /lib/systemd/system)")
set(FETCHD_SYSUSERS_DIR "${_fetchd_sysusers_default}" CACHE PATH
    "The sysusers.d directory (default: Debian bookworm's /usr/lib/sysusers.d)")

# The unit names /usr/bin/fetchd and /etc/fetchd/fetchd.json: the package's
# layout (CPack installs under /usr whatever the build's prefix is). The
# config file always goes to /etc/fetchd, where the unit looks for it; a
# plain `cmake --install` should use --prefix /usr for the binary to match.
if(NOT CMAKE_INSTALL_PREFIX STREQUAL "/usr")
  message(STATUS "fetchd: the installed fetchd.service runs /usr/bin/fetchd; "
                 "install with --prefix /usr (as the DEB package does) for it to match")
endif()

install(TARGETS fetchd fetchctl RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(FILES "${CMAKE_CURRENT_LIST_DIR}/fetchd.service"
              "${CMAKE_CURRENT_LIST_DIR}/fetchd@.service"
              "${CMAKE_CURRENT_LIST_DIR}/fetchd.socket"
        DESTINATION "${FETCHD_SYSTEMD_UNIT_DIR}")
install(FILES "${CMAKE_CURRENT_LIST_DIR}/fetchd.sysusers"
        DESTINATION "${FETCHD_SYSUSERS_DIR}" RENAME fetchd.conf)
install(FILES "${CMAKE_CURRENT_LIST_DIR}/fetchd.json" DESTINATION /etc/fetchd)
install(FILES "${CMAKE_SOURCE_DIR}/client/fetchctl.1" DESTINATION "${CMAKE_INSTALL_MANDIR}/man1")
install(FILES "${CMAKE_CURRENT_LIST_DIR}/fetchd.8" DESTINATION "${CMAKE_INSTALL_MANDIR}/man8")
install(FILES "${CMAKE_CURRENT_LIST_DIR}/fetchctl.bash-completion"
        DESTINATION "${CMAKE_INSTALL_DATADIR}/bash-completion/completions" RENAME fetchctl)
install(FILES "${CMAKE_CURRENT_LIST_DIR}/README.md"
        DESTINATION "${CMAKE_INSTALL_DOCDIR}" RENAME README.deploy.md)
install(FILES "${CMAKE_SOURCE_DIR}/README.md" DESTINATION "${CMAKE_INSTALL_DOCDIR}")

# The Debian package. Package files use the /usr layout whatever prefix the
# build tree was configured with.
set(CPACK_GENERATOR "DEB")
set(CPACK_PACKAGE_NAME "fetchd")
set(CPACK_PACKAGE_VERSION "${PROJECT_VERSION}")
set(CPACK_PACKAGING_INSTALL_PREFIX "/usr")
set(CPACK_PACKAGE_CONTACT "fetchd maintainers <fetchd@localhost>")
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "fetchd maintainers <fetchd@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "event-driven HTTP(S) fetcher daemon")
set(CPACK_PACKAGE_DESCRIPTION
    "fetchd runs fetch jobs handed to it over a JSON-RPC control socket on one\n"
    "libuv event loop, over pooled keep-alive HTTP/1.1 and HTTPS (mbedTLS)\n"
    "connections, and shows on its Prometheus metrics endpoint that its\n"
    "connection, buffer, job and heap counts return to their baseline.\n"
    "fetchctl is its command-line client. The package ships systemd units\n"
    "(fetchd.service, fetchd.socket, and fetchd@.service for several Redis\n"
    "queue consumers on one host) that are installed but not enabled.")
string(REPLACE ";" "" CPACK_PACKAGE_DESCRIPTION "${CPACK_PACKAGE_DESCRIPTION}")
set(CPACK_DEBIAN_PACKAGE_SECTION "net")
set(CPACK_DEBIAN_PACKAGE_PRIORITY "optional")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
# The run-time libraries of Debian bookworm that fetchd and fetchctl link
# (libmbedtls-dev depends on exactly these three mbedTLS packages), and the
# content decoders' zlib, brotli and zstd.
set(CPACK_DEBIAN_PACKAGE_DEPENDS
    "libc6 (>= 2.34), libuv1 (>= 1.44), libjansson4 (>= 2.14), libmbedtls14 (>= 2.28), libmbedx509-1 (>= 2.28), libmbedcrypto7 (>= 2.28), zlib1g, libbrotli1, libzstd1")
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "ca-certificates, systemd")
# conffiles: dpkg keeps an administrator's changes to /etc/fetchd/fetchd.json.
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    "${CMAKE_CURRENT_LIST_DIR}/debian/conffiles;${CMAKE_CURRENT_LIST_DIR}/debian/postinst;${CMAKE_CURRENT_LIST_DIR}/debian/prerm;${CMAKE_CURRENT_LIST_DIR}/debian/postrm")
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
include(CPack)
