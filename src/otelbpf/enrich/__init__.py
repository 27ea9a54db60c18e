"""Resource and process attributes: host, cgroup -> container, kubernetes."""
