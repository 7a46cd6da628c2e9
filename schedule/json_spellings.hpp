// The JSON spellings of the IR's enums (dtype, fp8 format, collective kind, phase, copy kind, p2p transport) as name
// tables (common/enum_names.hpp), shared by the schedule JSON reader (json_read.cpp) and writer (json_write.cpp).
// Internal to schedule/: other modules use the functions of schedule/json.hpp (dtype_name, parse_dtype, ...).
#pragma once

#include "common/enum_names.hpp"
#include "schedule/schedule.hpp"

namespace twinstep::schedule::spelling {

inline constexpr NameTable<DType, 6> kDTypes{{{"bf16", DType::kBF16},
                                              {"fp16", DType::kFP16},
                                              {"fp32", DType::kFP32},
                                              {"fp8", DType::kFP8},
                                              {"int64", DType::kInt64},
                                              {"int32", DType::kInt32}}};
inline constexpr NameTable<Fp8Format, 2> kFp8Formats{{{"e4m3", Fp8Format::kE4M3}, {"e5m2", Fp8Format::kE5M2}}};
inline constexpr NameTable<CollectiveKind, 5> kCollectives{{{"all_reduce", CollectiveKind::kAllReduce},
                                                            {"all_gather", CollectiveKind::kAllGather},
                                                            {"reduce_scatter", CollectiveKind::kReduceScatter},
                                                            {"all_to_all", CollectiveKind::kAllToAll},
                                                            {"broadcast", CollectiveKind::kBroadcast}}};
inline constexpr NameTable<Phase, 5> kPhases{{{"none", Phase::kNone},
                                              {"fwd", Phase::kFwd},
                                              {"bwd", Phase::kBwd},
                                              {"wgrad", Phase::kWgrad},
                                              {"optim", Phase::kOptim}}};
inline constexpr NameTable<CopyKind, 3> kCopies{
    {{"d2h", CopyKind::kD2H}, {"h2d", CopyKind::kH2D}, {"d2d", CopyKind::kD2D}}};
inline constexpr NameTable<Transport, 3> kTransports{
    {{"nccl", Transport::kNccl}, {"copy_engine", Transport::kCopyEngine}, {"sm_kernel", Transport::kSmKernel}}};

}  // namespace twinstep::schedule::spelling
