from bootserver.cli import main

main()
