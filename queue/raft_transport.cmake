# Folded into queue/CMakeLists.txt when the queue library lands.
add_library(backstop_raft_transport ${PROJECT_SOURCE_DIR}/queue/raft_transport.cc)
target_link_libraries(backstop_raft_transport PUBLIC backstop::raft gRPC::grpc++
                                              PRIVATE backstop_warnings)
