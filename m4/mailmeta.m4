# mailmeta.m4 - dependency checks for mailmeta's configure
#
# Each check either sets the variables the components build with or stops
# configure with the Debian package that provides what is missing.  Dovecot
# ships no pkg-config file: its flags come from dovecot-config, the shell
# fragment dovecot-dev installs; it is read with sed rather than sourced, so
# only the values named here are taken from it.

# MM_REQUIRE_PKG(PREFIX, MODULES, DEBIAN-PACKAGE)
AC_DEFUN([MM_REQUIRE_PKG], [
  PKG_CHECK_MODULES([$1], [$2], [],
    [AC_MSG_ERROR([$2 not found ($$1_PKG_ERRORS).
Install it with: apt-get install $3])])
])

# MM_REQUIRE_LIBMILTER: libmilter has no pkg-config file on Debian.
AC_DEFUN([MM_REQUIRE_LIBMILTER], [
  mm_save_LIBS=$LIBS
  AC_CHECK_HEADER([libmilter/mfapi.h], [],
    [AC_MSG_ERROR([libmilter/mfapi.h not found.
Install it with: apt-get install libmilter-dev])])
  AC_CHECK_LIB([milter], [smfi_main], [LIBMILTER_LIBS="-lmilter -lpthread"],
    [AC_MSG_ERROR([libmilter not found.
Install it with: apt-get install libmilter-dev])], [-lpthread])
  LIBS=$mm_save_LIBS
  AC_SUBST([LIBMILTER_LIBS])
])

# mm_dovecot_config_value FILE NAME: print NAME's value from dovecot-config,
# with its shell quoting removed.
AC_DEFUN([MM_DOVECOT_CONFIG_READER], [
mm_dovecot_config_value() {
  sed -n "s/^$[]2=//p" "$[]1" | sed -e "s/^'\(.*\)'$/\1/" -e 's/^"\(.*\)"$/\1/' | head -n 1
}
])

# MM_DOVECOT: --with-dovecot=DIR (where dovecot-config lives) and
# --with-dovecot-moduledir=DIR (where mail plugins install).
AC_DEFUN([MM_DOVECOT], [
  AC_REQUIRE([MM_DOVECOT_CONFIG_READER])
  AC_ARG_WITH([dovecot],
    [AS_HELP_STRING([--with-dovecot=DIR],
      [directory holding dovecot-config @<:@/usr/lib/dovecot@:>@])],
    [dovecotdir=$withval], [dovecotdir=/usr/lib/dovecot])
  AC_MSG_CHECKING([for dovecot-config in $dovecotdir])
  AS_IF([test -f "$dovecotdir/dovecot-config"], [AC_MSG_RESULT([yes])],
    [AC_MSG_RESULT([no])
     AC_MSG_ERROR([$dovecotdir/dovecot-config not found.
Install it with: apt-get install dovecot-dev
(or point --with-dovecot=DIR at the directory that holds dovecot-config)])])

  mm_dc="$dovecotdir/dovecot-config"
  DOVECOT_CFLAGS=$(mm_dovecot_config_value "$mm_dc" DOVECOT_CFLAGS)
  LIBDOVECOT=$(mm_dovecot_config_value "$mm_dc" LIBDOVECOT)
  LIBDOVECOT_STORAGE=$(mm_dovecot_config_value "$mm_dc" LIBDOVECOT_STORAGE)
  LIBDOVECOT_INCLUDE=$(mm_dovecot_config_value "$mm_dc" LIBDOVECOT_INCLUDE)
  dovecot_pkgincludedir=$(mm_dovecot_config_value "$mm_dc" dovecot_pkgincludedir)
  mm_dovecot_moduledir=$(mm_dovecot_config_value "$mm_dc" dovecot_moduledir)

  AC_ARG_WITH([dovecot-moduledir],
    [AS_HELP_STRING([--with-dovecot-moduledir=DIR],
      [where Dovecot mail plugins are installed @<:@from dovecot-config@:>@])],
    [dovecot_moduledir=$withval], [dovecot_moduledir=$mm_dovecot_moduledir])

  AC_MSG_CHECKING([for the Dovecot version])
  DOVECOT_VERSION_STRING=$(sed -n 's/^#define DOVECOT_VERSION "\(.*\)"$/\1/p' \
    "$dovecot_pkgincludedir/config.h" 2>/dev/null)
  AS_IF([test -n "$DOVECOT_VERSION_STRING"],
    [AC_MSG_RESULT([$DOVECOT_VERSION_STRING])],
    [AC_MSG_RESULT([unknown])
     AC_MSG_ERROR([Dovecot headers not found in $dovecot_pkgincludedir.
Install them with: apt-get install dovecot-dev])])
  AS_CASE([$DOVECOT_VERSION_STRING], [2.3.*], [],
    [AC_MSG_ERROR([Dovecot $DOVECOT_VERSION_STRING is not supported: mailmeta needs Dovecot 2.3])])

  AC_SUBST([dovecotdir])
  AC_SUBST([DOVECOT_CFLAGS])
  AC_SUBST([LIBDOVECOT])
  AC_SUBST([LIBDOVECOT_STORAGE])
  AC_SUBST([LIBDOVECOT_INCLUDE])
  AC_SUBST([dovecot_pkgincludedir])
  AC_SUBST([dovecot_moduledir])
  AC_SUBST([DOVECOT_VERSION_STRING])
])

# MM_PIGEONHOLE: --with-pigeonhole=DIR (installed Sieve headers) and
# --with-sieve-plugindir=DIR (where Sieve extension plugins install).
AC_DEFUN([MM_PIGEONHOLE], [
  AC_REQUIRE([MM_DOVECOT])
  AC_ARG_WITH([pigeonhole],
    [AS_HELP_STRING([--with-pigeonhole=DIR],
      [installed Pigeonhole headers @<:@DOVECOT_INCLUDEDIR/sieve@:>@])],
    [pigeonholedir=$withval], [pigeonholedir="$dovecot_pkgincludedir/sieve"])
  AC_MSG_CHECKING([for Pigeonhole headers in $pigeonholedir])
  AS_IF([test -f "$pigeonholedir/sieve-extensions.h" && \
         test -f "$pigeonholedir/pigeonhole-config.h"],
    [PIGEONHOLE_VERSION_STRING=$(sed -n \
       's/^#define PIGEONHOLE_VERSION "\(.*\)"$/\1/p' \
       "$pigeonholedir/pigeonhole-config.h")
     AC_MSG_RESULT([yes ($PIGEONHOLE_VERSION_STRING)])],
    [AC_MSG_RESULT([no])
     AC_MSG_ERROR([Pigeonhole (Sieve) headers not found in $pigeonholedir.
Install them with: apt-get install dovecot-dev dovecot-sieve
(or point --with-pigeonhole=DIR at the installed Sieve headers)])])

  AC_ARG_WITH([sieve-plugindir],
    [AS_HELP_STRING([--with-sieve-plugindir=DIR],
      [where Sieve extension plugins are installed @<:@DOVECOT_MODULEDIR/sieve@:>@])],
    [sieve_plugindir=$withval], [sieve_plugindir="$dovecot_moduledir/sieve"])

  LIBSIEVE_INCLUDE="-I$pigeonholedir"
  AC_SUBST([pigeonholedir])
  AC_SUBST([LIBSIEVE_INCLUDE])
  AC_SUBST([sieve_plugindir])
  AC_SUBST([PIGEONHOLE_VERSION_STRING])
])
