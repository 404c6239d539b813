/* The generated <rkv/version.h> and the library's version queries agree (the header a
 * program is compiled against and the library it runs with come from one project()). */
#include <rkv/version.h>

#include "rkv_test.h"

int main(void) {
  int major = -1, minor = -1, patch = -1;
  rkv_version(&major, &minor, &patch);
  EXPECT_EQ_INT(major, RKV_VERSION_MAJOR);
  EXPECT_EQ_INT(minor, RKV_VERSION_MINOR);
  EXPECT_EQ_INT(patch, RKV_VERSION_PATCH);
  rkv_version(NULL, NULL, NULL); /* every pointer is optional */
  rkv_version(NULL, &minor, NULL);
  EXPECT_EQ_INT(minor, RKV_VERSION_MINOR);
  EXPECT_STREQ(rkv_version_string(), RKV_VERSION_STRING);
  char want[32];
  snprintf(want, sizeof want, "%d.%d.%d", major, minor, patch);
  EXPECT_STREQ(rkv_version_string(), want);
  EXPECT(RKV_VERSION == RKV_MAKE_VERSION(major, minor, patch));
  EXPECT(RKV_VERSION > RKV_MAKE_VERSION(0, 1, 999));
  return rkv_test_finish();
}
