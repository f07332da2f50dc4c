/* ss_status.h -- the status codes of ss_status.def as a C enum. */
#ifndef SS_STATUS_H
#define SS_STATUS_H

enum ss_status {
#define SS_STATUS(name, value, message) name = (value),
#include "ss_status.def"
#undef SS_STATUS
};

#endif /* SS_STATUS_H */
