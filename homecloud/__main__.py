from homecloud.cli import main

main()
