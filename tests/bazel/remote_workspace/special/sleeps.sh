#!/bin/bash
# A test that never finishes in time: the executor must kill it.
echo "lazybarn-sleeps: started"
sleep 600
