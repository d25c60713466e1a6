DROP TABLE worker_nodes;
